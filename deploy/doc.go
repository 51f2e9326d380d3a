// Package deploy holds weft's Kubernetes manifest, kube-weft.yml: flannel's
// kube-flannel.yml with weft as the kube-flannel container, run as flanneld
// --kube-subnet-mgr with the udp backend. The package has no code; its
// tests submit the manifest to a real kube-apiserver (kube/kubetest) and
// check its RBAC with the ServiceAccount's own token.
package deploy
