#!/usr/bin/env python3
"""Load generator for the tunlb-operator benchmark (scripts/bench-operator.sh).

Subcommands (all use $KUBECONFIG):
  nodes     create fake Node objects (status.addresses set at create time)
  latency   create N VirtualServices with static backends, C in flight, while a
            watch records per object: create sent -> ADDED seen (the API
            server's own latency), -> finalizer seen, -> status with
            observedGeneration == generation and Resolved=True
  populate  create EndpointSlices, the Services some VirtualServices reference,
            and VirtualServices (for the scale run)
  wait      watch until N VirtualServices in NS are converged (observedGeneration
            == generation, Resolved=True); prints the elapsed time
Results are printed as one JSON object on stdout (progress goes to stderr).
"""
import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "tunlb.io", "v1alpha1", "virtualservices"
FINALIZER = "tunlb.io/cleanup"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def api_client(pool):
    cfg = client.Configuration()
    config.load_kube_config(client_configuration=cfg)
    # urllib3 discards connections beyond the pool size: every request beyond it
    # would be a fresh TLS handshake.
    cfg.connection_pool_maxsize = pool + 8
    return client.ApiClient(cfg)


def vip(i, first_octet):
    # 10.A.B.C, C in 1..250: distinct for i < 250*250*(256-A)
    return f"10.{first_octet + i // 62500}.{(i // 250) % 250}.{1 + i % 250}"


def node_ip(k):
    return f"172.20.{k // 250}.{1 + k % 250}"


def static_vs(name, i, first_octet, nodes):
    backends = [{"address": f"172.16.{(i // 250) % 250}.{1 + i % 250}"}]
    if nodes:
        backends.append({"address": node_ip(i % nodes)})
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"vip": vip(i, first_octet), "ports": [{"port": 80}], "backends": {"static": backends}},
    }


def service_vs(name, i, first_octet, svc):
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualService",
        "metadata": {"name": name},
        "spec": {"vip": vip(i, first_octet), "ports": [{"port": 80}], "backends": {"service": {"name": svc}}},
    }


def converged(obj):
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    return any(c.get("type") == "Resolved" and c.get("status") == "True" for c in st.get("conditions") or [])


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def run_pool(concurrency, items, fn):
    """fn(item) for every item, `concurrency` in flight; returns the error count."""
    errors = 0
    lock = threading.Lock()

    def wrap(it):
        nonlocal errors
        for attempt in range(5):
            try:
                fn(it)
                return
            except ApiException as e:
                if e.status == 409:  # already exists (a re-run)
                    return
                if e.status in (429, 500, 503, 504) and attempt < 4:
                    time.sleep(0.2 * (attempt + 1))
                    continue
                with lock:
                    errors += 1
                    if errors <= 5:
                        log(f"error: {e.status} {e.reason}: {(e.body or '')[:300]}")
                return

    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        list(ex.map(wrap, items))
    return errors


class VsWatch(threading.Thread):
    """Watches VirtualServices in one namespace from a resourceVersion and
    records, per name, when it was first seen, first seen with the finalizer,
    and first seen converged."""

    def __init__(self, ac, ns, rv):
        super().__init__(daemon=True)
        self.co = client.CustomObjectsApi(ac)
        self.ns, self.rv = ns, rv
        self.added, self.finalized, self.done = {}, {}, {}
        self.cond = threading.Condition()
        self.w = watch.Watch()
        self.stopped = False

    def stop(self):
        self.stopped = True
        self.w.stop()

    def run(self):
        rv = self.rv
        while True:
            try:
                for ev in self.w.stream(
                    self.co.list_namespaced_custom_object, GROUP, VERSION, self.ns, PLURAL,
                    resource_version=rv, allow_watch_bookmarks=True,
                ):
                    t = time.monotonic()
                    obj = ev["object"]
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] not in ("ADDED", "MODIFIED"):
                        continue
                    name = obj["metadata"]["name"]
                    with self.cond:
                        self.added.setdefault(name, t)
                        if FINALIZER in (obj["metadata"].get("finalizers") or []):
                            self.finalized.setdefault(name, t)
                        if name not in self.done and converged(obj):
                            self.done[name] = t
                        self.cond.notify_all()
                return
            except ApiException as e:
                if e.status == 410:
                    log("watch: 410 Gone; results would be incomplete")
                    raise
                log(f"watch restart: {e}")
                time.sleep(0.1)
            except Exception as e:  # the connection closed by stop(), or dropped
                if self.stopped:
                    return
                log(f"watch restart: {e!r}")
                time.sleep(0.1)

    def wait(self, pred, timeout):
        end = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 1.0))
        return True


def start_watch(ac, ns):
    co = client.CustomObjectsApi(ac)
    rv = co.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, limit=1)["metadata"]["resourceVersion"]
    w = VsWatch(ac, ns, rv)
    w.start()
    return w, co


def cmd_nodes(a):
    ac = api_client(a.concurrency)
    core = client.CoreV1Api(ac)

    def mk(k):
        labels = {"kubernetes.io/hostname": f"node-{k}"}
        if k < a.directors:
            labels["tunlb.io/director"] = "true"
        core.create_node({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": f"node-{k}", "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": node_ip(k)},
                                     {"type": "Hostname", "address": f"node-{k}"}]},
        })

    err = run_pool(a.concurrency, range(a.count), mk)
    print(json.dumps({"nodes": a.count, "errors": err}))


def cmd_latency(a):
    ac = api_client(a.concurrency)
    w, co = start_watch(ac, a.ns)
    # A sentinel proves the watch is live (and, with an operator, warms it up).
    t0 = time.monotonic()
    co.create_namespaced_custom_object(GROUP, VERSION, a.ns, PLURAL, static_vs("warmup", 0, a.vip_octet - 1, a.nodes))
    ok = w.wait(lambda: ("warmup" in w.done) if a.operator else ("warmup" in w.added), 120)
    log(f"warmup {'ok' if ok else 'TIMEOUT'} in {time.monotonic() - t0:.3f}s")
    if not ok:
        sys.exit(1)

    names = [f"{a.prefix}-{i}" for i in range(a.count)]
    sent, created = {}, {}
    lock = threading.Lock()

    def mk(i):
        name = names[i]
        body = static_vs(name, i, a.vip_octet, a.nodes)
        t = time.monotonic()
        with lock:
            sent[name] = t
        co.create_namespaced_custom_object(GROUP, VERSION, a.ns, PLURAL, body)
        with lock:
            created[name] = time.monotonic()

    start = time.monotonic()
    err = run_pool(a.concurrency, range(a.count), mk)
    all_created = time.monotonic() - start
    log(f"created {a.count} in {all_created:.2f}s ({err} errors)")
    want = set(names)
    w.wait(lambda: want <= w.added.keys(), a.timeout)
    if a.operator:
        ok = w.wait(lambda: want <= w.done.keys(), a.timeout)
        log(f"converged: {ok}")
    w.stop()
    with w.cond:
        added = {n: w.added[n] - sent[n] for n in names if n in w.added}
        fin = {n: w.finalized[n] - sent[n] for n in names if n in w.finalized}
        done = {n: w.done[n] - sent[n] for n in names if n in w.done}
        last_added = max((w.added[n] for n in names if n in w.added), default=start) - start
        last_done = max((w.done[n] for n in names if n in w.done), default=start) - start
    resp = [created[n] - sent[n] for n in names if n in created]
    ms = lambda x: None if x is None else round(x * 1000, 2)
    out = {
        "count": a.count, "concurrency": a.concurrency, "errors": err, "operator": a.operator,
        "wall_all_created_s": round(all_created, 3),
        "wall_all_added_s": round(last_added, 3),
        "create_response_ms": {"p50": ms(pct(resp, 50)), "p99": ms(pct(resp, 99))},
        "create_to_added_ms": {"n": len(added), "p50": ms(pct(list(added.values()), 50)),
                               "p99": ms(pct(list(added.values()), 99)), "max": ms(max(added.values(), default=None))},
    }
    if a.operator:
        out.update({
            "wall_all_converged_s": round(last_done, 3),
            "create_to_finalizer_ms": {"n": len(fin), "p50": ms(pct(list(fin.values()), 50)),
                                       "p99": ms(pct(list(fin.values()), 99))},
            "create_to_resolved_ms": {"n": len(done), "p50": ms(pct(list(done.values()), 50)),
                                      "p99": ms(pct(list(done.values()), 99)), "max": ms(max(done.values(), default=None))},
        })
        if added and done:
            out["ratio_p50"] = round(pct(list(done.values()), 50) / pct(list(added.values()), 50), 2)
            out["ratio_p99"] = round(pct(list(done.values()), 99) / pct(list(added.values()), 99), 2)
    print(json.dumps(out))


def cmd_populate(a):
    ac = api_client(a.concurrency)
    disc = client.DiscoveryV1Api(ac)
    core = client.CoreV1Api(ac)
    co = client.CustomObjectsApi(ac)
    t0 = time.monotonic()

    def slice_(j):
        eps = []
        for e in range(a.endpoints):
            n = (j * a.endpoints + e)
            eps.append({"addresses": [f"10.244.{(n // 250) % 250}.{1 + n % 250}"],
                        "conditions": {"ready": True}, "nodeName": f"node-{n % max(a.nodes, 1)}"})
        disc.create_namespaced_endpoint_slice(a.ns, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"svc-{j}-abcde", "labels": {"kubernetes.io/service-name": f"svc-{j}"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        })

    def service(j):
        core.create_namespaced_service(a.ns, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"svc-{j}"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        })

    def vs(i):
        name = f"vs-{i}"
        if a.service_every and i % a.service_every == 0:
            body = service_vs(name, i, a.vip_octet, f"svc-{i % a.slices}")
        else:
            body = static_vs(name, i, a.vip_octet, a.nodes)
        co.create_namespaced_custom_object(GROUP, VERSION, a.ns, PLURAL, body)

    e1 = run_pool(a.concurrency, range(a.slices), slice_)
    t1 = time.monotonic()
    log(f"{a.slices} EndpointSlices in {t1 - t0:.1f}s ({e1} errors)")
    svcs = sorted({i % a.slices for i in range(a.vs) if a.service_every and i % a.service_every == 0})
    e2 = run_pool(a.concurrency, svcs, service)
    t2 = time.monotonic()
    log(f"{len(svcs)} Services in {t2 - t1:.1f}s ({e2} errors)")
    e3 = run_pool(a.concurrency, range(a.vs), vs)
    t3 = time.monotonic()
    log(f"{a.vs} VirtualServices in {t3 - t2:.1f}s ({e3} errors)")
    print(json.dumps({"slices": a.slices, "services": len(svcs), "virtualservices": a.vs,
                      "errors": e1 + e2 + e3, "seconds": round(t3 - t0, 1)}))


def cmd_wait(a):
    ac = api_client(4)
    co = client.CustomObjectsApi(ac)
    t0 = time.monotonic()
    state, cont, rv = {}, None, None
    while True:
        page = co.list_namespaced_custom_object(GROUP, VERSION, a.ns, PLURAL, limit=500, _continue=cont)
        for o in page["items"]:
            state[o["metadata"]["name"]] = converged(o)
        cont = page["metadata"].get("continue")
        rv = rv or page["metadata"]["resourceVersion"]
        if not cont:
            break
    rv = page["metadata"]["resourceVersion"] if rv is None else rv
    last = time.monotonic()
    n_done = sum(state.values())
    log(f"wait: listed {len(state)}, {n_done} converged")
    w = watch.Watch()
    deadline = t0 + a.timeout
    next_log = time.monotonic() + 10
    while n_done < a.count and time.monotonic() < deadline:
        try:
            for ev in w.stream(co.list_namespaced_custom_object, GROUP, VERSION, a.ns, PLURAL,
                               resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=30):
                obj = ev["object"]
                rv = obj["metadata"].get("resourceVersion", rv)
                if ev["type"] not in ("ADDED", "MODIFIED"):
                    continue
                was = state.get(obj["metadata"]["name"], False)
                now = converged(obj)
                state[obj["metadata"]["name"]] = now
                if now and not was:
                    n_done += 1
                    last = time.monotonic()
                if time.monotonic() > next_log:
                    log(f"wait: {n_done}/{a.count} converged after {time.monotonic() - t0:.0f}s")
                    next_log = time.monotonic() + 10
                if n_done >= a.count or time.monotonic() > deadline:
                    w.stop()
                    break
        except ApiException as e:
            log(f"wait: watch error {e.status}; relisting is not implemented")
            raise
    print(json.dumps({"converged": n_done, "count": a.count, "ok": n_done >= a.count,
                      "seconds": round(last - t0, 2)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("nodes")
    s.add_argument("--count", type=int, default=20)
    s.add_argument("--directors", type=int, default=1)
    s.add_argument("--concurrency", type=int, default=8)
    s = sub.add_parser("latency")
    s.add_argument("--ns", required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--concurrency", type=int, default=32)
    s.add_argument("--prefix", default="lat")
    s.add_argument("--vip-octet", type=int, default=200, help="first octet after 10. for VIPs")
    s.add_argument("--nodes", type=int, default=0, help="node-K InternalIPs used as a second backend")
    s.add_argument("--no-operator", dest="operator", action="store_false",
                   help="measure create -> ADDED only (no operator running)")
    s.add_argument("--timeout", type=float, default=900)
    s = sub.add_parser("populate")
    s.add_argument("--ns", required=True)
    s.add_argument("--vs", type=int, default=10000)
    s.add_argument("--slices", type=int, default=10000)
    s.add_argument("--endpoints", type=int, default=3)
    s.add_argument("--service-every", type=int, default=10, help="every Nth VirtualService uses a Service (0: none)")
    s.add_argument("--nodes", type=int, default=20)
    s.add_argument("--vip-octet", type=int, default=1)
    s.add_argument("--concurrency", type=int, default=32)
    s = sub.add_parser("wait")
    s.add_argument("--ns", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args()
    sys.setswitchinterval(0.0005)
    {"nodes": cmd_nodes, "latency": cmd_latency, "populate": cmd_populate, "wait": cmd_wait}[a.cmd](a)


if __name__ == "__main__":
    main()
