# weft: `sudo make demo` runs a three-node cluster in network namespaces;
# `make test` runs every test (root runs the namespace end-to-end tests too).

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Fuzz budgets, per fuzz target: `make test` runs every fuzzer for FUZZTIME,
# a short run (unit has already run their seed corpora); `make fuzz-long`, as
# CI does after `make test`, for FUZZTIME_LONG. Counts, not durations:
# duration-based -fuzztime fails spuriously with "context deadline exceeded"
# on go1.26 (golang/go#75804).
FUZZTIME      ?= 10000x
FUZZTIME_LONG ?= 100000x
PREFIX   ?= /usr/local

.PHONY: all build demo bench soak scale kube-scale kernel-matrix test check unit fuzz fuzz-long microbench generate generate-check clean install

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/weft .
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/weftlab ./bench/cmd/weftlab

# The container image (README.md, "The image"): from scratch plus the static
# binary, for amd64 and arm64, built without a container daemon and
# reproducible (times from SOURCE_DATE_EPOCH, default HEAD's commit time).
# Writes bin/image/weft-<version>-<arch>.tar (docker load -i) and
# bin/image/oci/ (an OCI layout, one index for both), and prints the digests.
IMAGE             ?= ghcr.io/weft-net/weft
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)

.PHONY: image
image:
	CGO_ENABLED=0 GOOS=linux GOARCH=amd64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/weft-linux-amd64 .
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/weft-linux-arm64 .
	$(GO) run ./image -amd64 bin/weft-linux-amd64 -arm64 bin/weft-linux-arm64 -name $(IMAGE) -version $(VERSION) \
	  -epoch "$(SOURCE_DATE_EPOCH)" -out bin/image

demo: build
	@command -v ping >/dev/null || { echo "demo needs ping: apt-get install -y iputils-ping"; exit 1; }
	@[ "$$(id -u)" = 0 ] || { echo "demo needs root (network namespaces): sudo make demo"; exit 1; }
	./bin/weftlab demo -weft ./bin/weft

# Benchmark weft and weft -fast-path=off against kernel VXLAN, host-gw and
# bare veth, on the default veth underlay and a NIC-like one (about 25
# minutes); writes bench/results/. BENCH_SECONDS (per test) and BENCH_ROUNDS
# shorten or lengthen it, BENCH_PROFILES=default leaves the NIC-like
# underlay out, BENCH_OUT writes elsewhere.
bench: build
	@command -v iperf3 >/dev/null || { echo "bench needs iperf3: apt-get install -y iperf3"; exit 1; }
	@command -v ping >/dev/null || { echo "bench needs ping: apt-get install -y iputils-ping"; exit 1; }
	@case "$${BENCH_PROFILES:-default,nic}" in *nic*) command -v ethtool >/dev/null || \
	  { echo "bench needs ethtool for its NIC-like underlay profile: apt-get install -y ethtool (or BENCH_PROFILES=default)"; exit 1; };; esac
	@[ "$$(id -u)" = 0 ] || { echo "bench needs root (network namespaces): sudo make bench"; exit 1; }
	./bin/weftlab bench -weft ./bin/weft -seconds $${BENCH_SECONDS:-6} -rounds $${BENCH_ROUNDS:-3} \
	  -profiles $${BENCH_PROFILES:-default,nic} -out $${BENCH_OUT:-bench/results}

# Soak (not part of test): 3 nodes under a TCP stream, pings and lease churn
# for SOAK_DURATION (default 10m); writes bench/results/soak.md.
soak: build
	@command -v ping >/dev/null || { echo "soak needs ping: apt-get install -y iputils-ping"; exit 1; }
	@[ "$$(id -u)" = 0 ] || { echo "soak needs root (network namespaces): sudo make soak"; exit 1; }
	./bin/weftlab soak -weft ./bin/weft -duration $${SOAK_DURATION:-10m}

# Control plane at 100, 1,000 and 5,000 leases (not part of test, ~2 min):
# three daemons watch simulated nodes in one etcd; writes
# bench/results/scale.{md,svg,json}. SCALE_SIZES and SCALE_CHURN override.
scale: build
	@command -v ping >/dev/null || { echo "scale needs ping: apt-get install -y iputils-ping"; exit 1; }
	@[ "$$(id -u)" = 0 ] || { echo "scale needs root (network namespaces): sudo make scale"; exit 1; }
	./bin/weftlab scale -weft ./bin/weft -sizes $${SCALE_SIZES:-100,1000,5000} -churn $${SCALE_CHURN:-20s} -out bench/results

# The Kubernetes control plane at 5,000 Nodes (not part of test, a few
# minutes): one weft -kube-subnet-mgr and a stock flanneld beside it
# (make flanneld, or WEFT_FLANNELD=path), on a real kube-apiserver; writes
# bench/results/kube-scale.md. KUBE_SCALE sets the Nodes.
kube-scale: build kube-apiserver $(UNIT_FLANNELD)
	@[ "$$(id -u)" = 0 ] || { echo "kube-scale needs root (network namespaces): sudo make kube-scale"; exit 1; }
	WEFT_FLANNELD=$${WEFT_FLANNELD:-$(if $(UNIT_FLANNELD),$(CURDIR)/$(UNIT_FLANNELD))} WEFT_KUBE_SCALE=$${KUBE_SCALE:-5000} $(GO) test -count=1 -timeout 20m -run '^TestKubeScale$$' -v ./bench/scale/

test: check unit fuzz

# golangci-lint with .golangci.yml's short list, built once into bin/ from the
# Go module proxy (about a minute the first time).
GOLANGCI_VERSION := v2.15.0
GOLANGCI         := bin/golangci-lint-$(GOLANGCI_VERSION)

$(GOLANGCI):
	@mkdir -p bin
	GOBIN=$(CURDIR)/bin/.golangci $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_VERSION)
	mv bin/.golangci/golangci-lint $@ && rmdir bin/.golangci

# Formatting, vet and lint: cheap, first.
check: $(GOLANGCI)
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))"; \
	  if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags wgtun . ./tunnel  # the wireguard-go TUN build for bench/README.md's comparison
	$(GOLANGCI) run ./...
	$(GOLANGCI) run --build-tags wgtun . ./tunnel

# A real kube-apiserver for the Kubernetes lease store's tests (they run the
# API server itself, never a fake clientset), built once into bin/ from its own
# module kube/apiserver, so weft's module needs only client-go: about 17
# minutes and 3 GB of RAM cold on 2 cores, seconds when cached.
# kube/kubetest finds it here, or at WEFT_KUBE_APISERVER.
KUBE_VERSION   := v1.37.2
KUBE_APISERVER := bin/kube-apiserver-$(KUBE_VERSION)
KUBE_MINOR     := $(word 2,$(subst ., ,$(KUBE_VERSION)))

.PHONY: kube-apiserver
kube-apiserver: $(KUBE_APISERVER)

$(KUBE_APISERVER):
	@mkdir -p bin
	cd kube/apiserver && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(KUBE_MINOR)" -o $(CURDIR)/$@ k8s.io/kubernetes/cmd/kube-apiserver

# Stock flanneld (udp backend: cgo, amd64) for the mixed weft/flanneld
# clusters in bench/lab (etcd and --kube-subnet-mgr) and beside weft in
# kube-scale, built once into bin/ from flannel's release module on the Go
# module proxy: about 5 minutes cold. The TencentCloud VPC backend is left
# out: its SDK module is not on every proxy, and no test uses it.
# WEFT_FLANNELD=path uses another flanneld instead.
FLANNEL_VERSION := v0.28.10
FLANNELD        := bin/flanneld-$(FLANNEL_VERSION)

.PHONY: flanneld
flanneld: $(FLANNELD)

$(FLANNELD):
	@mkdir -p bin
	@set -e; tmp=$$(mktemp -d); trap 'chmod -R u+w "$$tmp"; rm -rf "$$tmp"' EXIT; \
	  cd "$$tmp" && $(GO) mod init flanneld-build >/dev/null 2>&1; \
	  dir=$$($(GO) mod download -json github.com/flannel-io/flannel@$(FLANNEL_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	  [ -n "$$dir" ] || { echo "flanneld: go mod download github.com/flannel-io/flannel@$(FLANNEL_VERSION) gave no source"; exit 1; }; \
	  cp -r "$$dir" src && chmod -R u+w src && cd src; \
	  sed -i '\|"github.com/flannel-io/flannel/pkg/backend/tencentvpc"|d' main.go; \
	  echo "building stock flanneld $(FLANNEL_VERSION) into $@"; \
	  CGO_ENABLED=1 $(GO) build -trimpath -ldflags "-X github.com/flannel-io/flannel/pkg/version.Version=$(FLANNEL_VERSION)" -o $(CURDIR)/$@ .

# flanneld's udp backend is amd64-only: elsewhere the mixed tests skip.
ifeq ($(shell $(GO) env GOARCH),amd64)
UNIT_FLANNELD := $(FLANNELD)
endif

# Unit, etcd and (as root) namespace end-to-end tests, with the race detector.
# Most of their time is waiting (on daemons' timers, etcd outages, backoffs),
# not CPU: four packages run at once and up to four of a package's parallel
# tests (bench/lab's waiting ones), even on 2 CPUs.
UNITFLAGS ?= -p 4 -parallel 4
unit: $(KUBE_APISERVER) $(UNIT_FLANNELD)
	@if [ "$$(id -u)" = 0 ] && ! command -v ping >/dev/null; then \
	  echo "end-to-end tests need ping: apt-get install -y iputils-ping"; exit 1; fi
	WEFT_FLANNELD=$${WEFT_FLANNELD:-$(if $(UNIT_FLANNELD),$(CURDIR)/$(UNIT_FLANNELD))} $(GO) test -race -count=1 $(UNITFLAGS) -timeout 20m ./...

# The kernel matrix (bench/vm, about 3 minutes once the kernel is cached):
# Debian 12's Linux 6.1 under qemu (TCG, no network device) on this
# machine's root, read-only: bench/lab's fast-path tests as root and with
# the shipped unit's capabilities, and real systemd running the unit. The
# kernel is the newest linux-image-6.1.0-*-amd64 apt serves, downloaded (not
# installed) and unpacked into bin/kernels/ once; KERNEL_PKG picks another.
VM_KERNELS := bin/kernels
kernel-matrix:
	@for c in qemu-system-x86_64 busybox depmod; do command -v $$c >/dev/null || \
	  { echo "kernel-matrix needs $$c: apt-get install -y qemu-system-x86 busybox-static kmod"; exit 1; }; done
	@set -e; pkg=$${KERNEL_PKG:-$$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$$' | cut -d' ' -f1 | sort -V | tail -1)}; \
	  [ -n "$$pkg" ] || { echo "kernel-matrix: apt knows no linux-image-6.1.0-*-amd64 (Debian 12's): apt-get update"; exit 1; }; \
	  dir=$(CURDIR)/$(VM_KERNELS)/$$pkg; \
	  if [ ! -e "$$dir/.done" ]; then \
	    rm -rf "$$dir" && mkdir -p "$$dir"; \
	    (cd "$$dir" && apt-get download -q "$$pkg" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true); \
	    dpkg-deb -x "$$dir"/*.deb "$$dir" && rm -f "$$dir"/*.deb; \
	    depmod -b "$$dir" "$${pkg#linux-image-}" && touch "$$dir/.done"; \
	  fi; \
	  echo "kernel matrix on $$pkg"; \
	  WEFT_VM_KERNEL="$$dir" $(GO) test -count=1 -timeout 30m -v ./bench/vm/

# Every fuzz target, each for FUZZTIME executions. The targets are the
# func FuzzXxx(*testing.F) in each package's test files for this platform
# (go list's TestGoFiles and XTestGoFiles): no test binary is built just to
# list them. Each target still compiles and links its package once: go test
# fuzzes one target per run.
fuzz:
	@set -e; log=$$(mktemp); trap 'rm -f "$$log"' EXIT; n=0; mod=$$($(GO) list -m); \
	pkgs=$$($(GO) list -f '{{.ImportPath}}{{range .TestGoFiles}} {{.}}{{end}}{{range .XTestGoFiles}} {{.}}{{end}}' ./...); \
	echo "$$pkgs" | { while read -r pkg files; do \
	  [ -n "$$files" ] || continue; \
	  for f in $$(cd "./$${pkg#"$$mod"}" && sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)([A-Za-z0-9_]* *\*testing\.F).*/\1/p' $$files); do \
	    echo "fuzz $$pkg $$f ($(FUZZTIME))"; n=$$((n+1)); \
	    $(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$pkg >"$$log" 2>&1 || { cat "$$log"; exit 1; }; \
	  done; \
	done; [ $$n -gt 0 ] || { echo "fuzz: no fuzz targets found"; exit 1; }; echo "fuzz: all $$n targets passed ($(FUZZTIME) each)"; }

# Every fuzz target for FUZZTIME_LONG executions (CI runs it after make test).
fuzz-long:
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_LONG)

# The kernel fast path's eBPF programs (fastpath/bpf/*.c) into the committed
# fastpath/weft_bpfel.{go,o}, with Debian's clang (apt-get install -y clang
# llvm libbpf-dev); go build itself needs no clang.
BPF_CFLAGS ?= -I/usr/include/$(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
generate:
	@command -v clang >/dev/null || { echo "generate needs clang: apt-get install -y clang llvm libbpf-dev"; exit 1; }
	cd fastpath && BPF_CFLAGS="$(BPF_CFLAGS)" $(GO) generate .

# CI: the committed objects are what the C sources build to.
generate-check: generate
	@git diff --exit-code -- fastpath || { echo "fastpath's generated files differ from what make generate builds: run make generate and commit"; exit 1; }

# Data-path micro-benchmarks: per packet and per batch, peer lookup at
# 10, 1,000 and 5,000 peers, with bytes/s and allocations; one change of the
# kernel fast path's peer map at 5,000 peers (as root).
microbench:
	$(GO) test -run '^$$' -bench . -benchmem ./tunnel/... ./fastpath/...

install: build
	install -D -m 0755 bin/weft $(DESTDIR)$(PREFIX)/bin/weft
	install -D -m 0644 systemd/weft.service $(DESTDIR)/etc/systemd/system/weft.service
	[ -e $(DESTDIR)/etc/default/weft ] || install -D -m 0644 systemd/weft.env $(DESTDIR)/etc/default/weft

clean:
	rm -rf bin
