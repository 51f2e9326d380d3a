//go:build tools

// Package apiserver only pins the kube-apiserver that weft's tests run.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
