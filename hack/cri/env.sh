# Common variables of hack/cri/* (sourced).
#   CRI_DIR      all state of the private containerd (default /tmp/runvz-cri)
#   CRI_NETNS    the network namespace containerd (and so the CNI bridge) lives in (default runvz-cri)
#   RUNVZ        the runvz binary of the `runvz` handler (default <repo>/target/release/runvz)
#   RUNC         the runc binary of the `runc` handler (default /usr/sbin/runc)
# The CRI plugin's namespace is always k8s.io, so the runc.v2 shim passes `--root /run/containerd/runc/k8s.io`.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CRI_DIR=${CRI_DIR:-/tmp/runvz-cri}
CRI_NETNS=${CRI_NETNS:-runvz-cri}
CRI_SOCK=$CRI_DIR/containerd.sock
CRI_CGROUP=runvz-cri                      # parent cgroup of every test pod (cgroupfs driver)
CRI_BRIDGE=runvzcri0
CRI_SUBNET=10.88.77.0/24
CRI_RUNTIME_ROOT=/run/containerd/runc/k8s.io   # where the shim keeps runtime state (--root)
RUNVZ=${RUNVZ:-$REPO/target/release/runvz}
RUNC=${RUNC:-/usr/sbin/runc}
PAUSE_IMAGE=localhost/runvz-cri/pause:1
BUSYBOX_IMAGE=localhost/runvz-cri/busybox:1
CTR=(ctr -a "$CRI_SOCK" -n k8s.io)
