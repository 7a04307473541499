# shellcheck shell=bash
# One node for the control plane of scripts/cluster.sh (sourced by it; `up --node`, `down`):
# containerd with Debian's runc, the kubelet (cgroup v1 allowed, cgroupfs driver), kube-scheduler,
# and a bridge CNI network, all as root on this machine. Nothing is pulled: the images come from
# scripts/images.sh (the product's image and the pause sandbox image), imported into containerd.
#
# Networking. Pods live on the bridge $NODE_BRIDGE, $POD_CIDR, whose gateway $POD_GATEWAY is this
# machine; they get no default route (only the pod network and the Service network), so nothing
# a pod sends can leave the machine. The backends listen on loopback, which pods cannot reach,
# so `socat` relays listen on the gateway for each of them: Redis, PostgreSQL, MariaDB, Kafka's
# pod listener (scripts/kafka.sh: it advertises $POD_GATEWAY) and the apiserver. The `kubernetes`
# Service address (10.0.0.1:443, in-cluster clients) is sent to the apiserver's relay by one
# DNAT rule; no kube-proxy runs, so other Services have no routing (reach pods by their address).
#
# NODE_TAINT (KEY=VALUE:EFFECT, empty by default) registers the node with that taint: the test
# suite taints it so that only namespaces whose pods tolerate it (PodTolerationRestriction's
# namespace annotation) run on it and every other test's pods stay Pending as before.
# State: /var/lib/fcfs-coupons-node (containerd, the kubelet's root, pod logs, CNI config and
# leases); logs of the processes in $STATE.

NODE_NAME=fcfs-node
NODE_BRIDGE=fcfs0
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
# Outside the checkout: a checkout in a private directory (mode 0700, as CI's may be) would keep
# the pods' non-root users from their own files; one node per machine in any case (the bridge,
# the iptables rules and the kubelet's ports are the machine's).
NODE_STATE=/var/lib/fcfs-coupons-node
# unix socket paths are limited to 108 bytes: a short directory of its own under /run
NODE_RUN=/run/fcfs-coupons-node
CONTAINERD_SOCKET="$NODE_RUN/containerd.sock"
KUBELET_HEALTHZ_PORT=10248
SCHEDULER_PORT=10259
# backend ports relayed from the pod gateway to loopback (Kafka's pod listener is 9096)
RELAY_PORTS=(6379 5432 3306 9096 "$API_PORT")
NODE_COMPONENTS=(containerd kubelet kube-scheduler)
SERVICE_DNAT=(-i "$NODE_BRIDGE" -d "$SERVICE_IP" -p tcp --dport 443 -m comment --comment fcfs-coupons-node
    -j DNAT --to-destination "$POD_GATEWAY:$API_PORT")
EGRESS_GUARD=(-i "$NODE_BRIDGE" ! -o "$NODE_BRIDGE" -m comment --comment fcfs-coupons-node -j DROP)

node_need() {
    local missing=() pair
    for pair in containerd:containerd runc:runc umoci:umoci skopeo:skopeo socat:socat \
        iptables:iptables ip:iproute2 /usr/lib/cni/bridge:containernetworking-plugins; do
        if [[ ${pair%%:*} == /* ]]; then [[ -x ${pair%%:*} ]] || missing+=("${pair#*:}")
        else command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); fi
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null || die "missing: ${missing[*]} (Debian packages)"
    log "installing ${missing[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >&2 ||
        die "apt-get could not install ${missing[*]}"
}

node_running() {
    local name port
    for name in "${NODE_COMPONENTS[@]}"; do pid_of "$name" >/dev/null || return 1; done
    for port in "${RELAY_PORTS[@]}"; do pid_of "relay-$port" >/dev/null || return 1; done
    node_ready
}

# something of a node is left: its state, or one of its processes
node_leftovers() {
    local name
    [[ -d $NODE_STATE || -d $NODE_RUN ]] && return 0
    for name in "${NODE_COMPONENTS[@]}"; do pid_of "$name" >/dev/null && return 0; done
    return 1
}

node_ready() {
    [[ $(kubectl_admin get node "$NODE_NAME" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

# The bridge with the gateway address (the CNI plugin reuses it), the Service DNAT, and a guard
# that drops anything a pod would send past this machine.
network_up() {
    cat /proc/sys/net/ipv4/ip_forward >"$NODE_STATE/ip_forward.saved"
    ip link add "$NODE_BRIDGE" type bridge 2>/dev/null || true
    ip addr replace "$POD_GATEWAY/${POD_CIDR#*/}" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
    iptables -t nat -A PREROUTING "${SERVICE_DNAT[@]}"
    iptables -I FORWARD "${EGRESS_GUARD[@]}"
    mkdir -p "$NODE_STATE/cni/conf"
    cat >"$NODE_STATE/cni/conf/10-fcfs.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fcfs-coupons",
  "plugins": [{
    "type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {
      "type": "host-local", "dataDir": "$NODE_STATE/cni/leases",
      "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
      "routes": [{"dst": "$SERVICE_CIDR"}]
    }
  }]
}
EOF
}

relays_up() {
    local port
    for port in "${RELAY_PORTS[@]}"; do
        start_program "relay-$port" "$(command -v socat)" \
            "TCP-LISTEN:$port,bind=$POD_GATEWAY,fork,reuseaddr" "TCP:$HOST:$port"
    done
}

containerd_up() {
    local dir="$NODE_STATE/containerd"
    mkdir -p "$dir" "$NODE_RUN"
    # restrict_oom_score_adj: a container may not get a lower oom_score_adj than containerd has
    # (a sandbox that forbids lowering it fails runc with "can't get final child's PID")
    cat >"$dir/config.toml" <<EOF
version = 2
root = "$dir/root"
state = "$NODE_RUN/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$CONTAINERD_SOCKET.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$("$REPO/scripts/images.sh" names | tail -n 1)"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_STATE/cni/conf"
EOF
    start_program containerd "$(command -v containerd)" --config "$dir/config.toml"
    wait_for containerd ctr --address "$CONTAINERD_SOCKET" version
}

kubelet_up() {
    local dir="$NODE_STATE/kubelet" taints=
    mkdir -p "$dir/root" "$dir/pki" "$NODE_STATE/pod-logs"
    if [[ -n ${NODE_TAINT:-} ]]; then
        local key=${NODE_TAINT%%=*} rest=${NODE_TAINT#*=}
        taints="registerWithTaints: [{key: \"$key\", value: \"${rest%%:*}\", effect: \"${rest#*:}\"}]"
    fi
    cat >"$dir/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# this kernel mounts cgroup v1 (the kubelet refuses it unless told otherwise)
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
address: $POD_GATEWAY
healthzBindAddress: $HOST
healthzPort: $KUBELET_HEALTHZ_PORT
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$PKI/ca.crt"}
authorization: {mode: Webhook}
failSwapOn: false
resolvConf: ""
podLogsDir: "$NODE_STATE/pod-logs"
# a shared test machine's disk and memory are not this node's to police
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 60
$taints
EOF
    start kubelet --config "$dir/config.yaml" --kubeconfig "$STATE/node.kubeconfig" \
        --root-dir "$dir/root" --cert-dir "$dir/pki" --hostname-override "$NODE_NAME" \
        --node-ip "$POD_GATEWAY"
    wait_for kubelet node_ready
}

scheduler_up() {
    local kc="$STATE/scheduler.kubeconfig"
    start kube-scheduler --kubeconfig "$kc" --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
        --bind-address "$HOST" --secure-port "$SCHEDULER_PORT" --leader-elect=false
    wait_for kube-scheduler port_open "$SCHEDULER_PORT"
}

node_up() {
    [[ $(id -u) == 0 ]] || die "the node needs root (containers, a bridge, cgroups, mounts)"
    node_need
    if node_running; then
        log "the node $NODE_NAME is Ready"
        return 0
    fi
    node_down
    local start=$SECONDS
    mkdir -p "$NODE_STATE"
    local dir
    for dir in /var/lib/kubelet /var/lib/cni; do
        [[ -e $dir ]] || touch "$NODE_STATE/made$(tr / - <<<"$dir")"
    done
    network_up
    relays_up
    containerd_up
    PROFILE="${IMAGES_PROFILE:-release}" "$REPO/scripts/images.sh" import "$CONTAINERD_SOCKET" 9>&- ||
        fail containerd "importing the images failed"
    kubelet_up
    scheduler_up
    log "the node $NODE_NAME is Ready (started in $((SECONDS - start))s); pods on $POD_CIDR"
}

# drop_kube_chains IPTABLES: the KUBE-* chains the kubelet made, and the rules jumping to them
drop_kube_chains() {
    local cmd=$1 table chain rule
    command -v "$cmd" >/dev/null || return 0
    for table in filter nat mangle; do
        for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
            "$cmd" -t "$table" -S 2>/dev/null | awk -v c="$chain" '$1 == "-A" && $0 ~ ("-j " c "( |$)") { $1 = "-D"; print }' |
                while read -r rule; do eval "$cmd -t $table $rule" 2>/dev/null || true; done
            "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
            "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

# Everything node_up made, undone: containers, mounts, cgroups, the network, the processes.
node_down() {
    local name port
    stop kube-scheduler
    stop kubelet
    if pid_of containerd >/dev/null; then
        local ctr=(ctr --address "$CONTAINERD_SOCKET" --namespace k8s.io) c
        for c in $("${ctr[@]}" tasks list -q 2>/dev/null); do
            "${ctr[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
        done
        sleep 0.5
        for c in $("${ctr[@]}" tasks list -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true; done
        for c in $("${ctr[@]}" containers list -q 2>/dev/null); do "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true; done
    fi
    stop containerd
    # socat forks a child per connection: the relay's whole process group goes
    local pid
    for port in "${RELAY_PORTS[@]}"; do
        pid=$(pid_of "relay-$port") && kill -- "-$pid" 2>/dev/null
        stop "relay-$port"
    done
    # the pods' network namespaces (their veths go with them), volumes and overlay mounts
    local ns
    for ns in /run/netns/cni-*; do [[ -e $ns ]] && ip netns delete "$(basename "$ns")" 2>/dev/null; done
    awk -v a="$NODE_STATE" -v b="$NODE_RUN" 'index($2, a) == 1 || index($2, b) == 1 { print $2 }' /proc/mounts |
        sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    local cg
    for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/k8s.io; do
        [[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    if command -v iptables >/dev/null; then
        while iptables -t nat -D PREROUTING "${SERVICE_DNAT[@]}" 2>/dev/null; do :; done
        while iptables -D FORWARD "${EGRESS_GUARD[@]}" 2>/dev/null; do :; done
        drop_kube_chains iptables
        drop_kube_chains ip6tables
    fi
    ip link delete "$NODE_BRIDGE" 2>/dev/null || true
    [[ -r $NODE_STATE/ip_forward.saved ]] && cat "$NODE_STATE/ip_forward.saved" >/proc/sys/net/ipv4/ip_forward
    # what the kubelet (device plugins) and the CNI library (results) keep at fixed places
    local dir
    for dir in /var/lib/kubelet /var/lib/cni; do
        [[ -e $NODE_STATE/made$(tr / - <<<"$dir") ]] && rm -rf "$dir"
    done
    rm -rf "$NODE_STATE" "$NODE_RUN"
}
