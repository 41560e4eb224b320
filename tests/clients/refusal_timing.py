#!/usr/bin/env python3
"""Refusal timing: can an outsider tell account classes apart by how long a refusal takes?
(Python 3 stdlib only.)

Sends `a LOGIN user password` over plain IMAP on a fresh connection per sample, and times
the command -> tagged answer. Classes are given as NAME=USER:PASSWORD; the samples of all
classes are interleaved in a random order and run CONCURRENCY at a time, so load affects every
class alike. The first class is the reference (a wrong password for a real account); each
other class is compared with it by a two-sample Kolmogorov-Smirnov test and a Mann-Whitney U
test (normal approximation).

Prints one JSON object as its last stdout line:
  {"classes": {name: {"n", "p10_ms", "median_ms", "p90_ms", "refused"}},
   "tests": {name: {"ks_d", "ks_p", "mw_p"}}}
Exit code 0 when every sample got a tagged NO (a refusal), non-zero otherwise.

Example:
  refusal_timing.py --port 1143 --samples 200 --warmup 20 --concurrency 32 \
      wrong=alice@example.com:nope unknown=nobody@example.com:nope
"""

import argparse
import json
import math
import random
import socket
import sys
import threading
import time


def login_time(host, port, user, password, timeout):
    """Seconds from sending LOGIN to the tagged answer, and that answer's status."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        f = s.makefile("rb")
        greeting = f.readline()
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"greeting {greeting!r}")
        line = f"a LOGIN {user} {password}\r\n".encode()
        started = time.monotonic()
        s.sendall(line)
        while True:
            answer = f.readline()
            if not answer:
                raise RuntimeError("closed before the answer")
            if answer.startswith(b"a "):
                return time.monotonic() - started, answer.split(b" ")[1].decode()


def percentile(sorted_xs, q):
    i = min(len(sorted_xs) - 1, max(0, int(round(q * (len(sorted_xs) - 1)))))
    return sorted_xs[i]


def ks_two_sample(xs, ys):
    """D statistic and asymptotic p-value (Kolmogorov distribution, Stephens' correction)."""
    xs, ys = sorted(xs), sorted(ys)
    n, m = len(xs), len(ys)
    i = j = 0
    d = 0.0
    while i < n and j < m:
        v = min(xs[i], ys[j])
        while i < n and xs[i] <= v:
            i += 1
        while j < m and ys[j] <= v:
            j += 1
        d = max(d, abs(i / n - j / m))
    en = math.sqrt(n * m / (n + m))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    p = 0.0
    for k in range(1, 101):
        term = 2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam)
        p += term
        if abs(term) < 1e-10:
            break
    return d, min(1.0, max(0.0, p))


def mann_whitney_p(xs, ys):
    """Two-sided p of the Mann-Whitney U test, normal approximation with tie correction."""
    n, m = len(xs), len(ys)
    pooled = sorted([(v, 0) for v in xs] + [(v, 1) for v in ys])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, pooled) if g == 0)
    u = r1 - n * (n + 1) / 2
    mean = n * m / 2
    var = n * m / 12 * ((n + m + 1) - ties / ((n + m) * (n + m - 1)))
    if var <= 0:
        return 1.0
    z = (u - mean) / math.sqrt(var)
    return math.erfc(abs(z) / math.sqrt(2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--samples", type=int, default=200, help="per class")
    ap.add_argument("--warmup", type=int, default=20,
                    help="reference-class logins first, not counted (the proxy learns)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("classes", nargs="+", help="NAME=USER:PASSWORD; the first is the reference")
    args = ap.parse_args()

    classes = []
    for spec in args.classes:
        name, cred = spec.split("=", 1)
        user, password = cred.split(":", 1)
        classes.append((name, user, password))

    ref = classes[0]
    warm = [ref] * args.warmup
    plan = [c for c in classes for _ in range(args.samples)]
    random.shuffle(plan)

    results = {name: [] for name, _, _ in classes}
    errors = []
    lock = threading.Lock()

    def run(queue, record):
        while True:
            with lock:
                if not queue:
                    return
                name, user, password = queue.pop()
            # Arrive at a random moment, as independent clients do: in a closed loop every
            # thread would start right after the upstream's failure timer fired, phase-locked
            # to it (Dovecot flushes failures on a 0.5 s tick).
            time.sleep(random.uniform(0, 0.5))
            try:
                took, status = login_time(args.host, args.port, user, password, args.timeout)
            except Exception as e:  # noqa: BLE001 - reported, counted as a failure
                with lock:
                    errors.append(f"{name}: {e}")
                continue
            if record:
                with lock:
                    results[name].append((took, status))

    # The warm-up puts the reference class alone at its share of the run's concurrency, so
    # the upstream sees the same load then as during the run (a burst would be slower and
    # teach the proxy latencies the run does not have).
    warm_concurrency = max(1, args.concurrency // len(classes))
    for queue, record, width in ((warm, False, warm_concurrency), (plan, True, args.concurrency)):
        threads = [threading.Thread(target=run, args=(queue, record))
                   for _ in range(width)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    out = {"classes": {}, "tests": {}, "errors": errors[:10]}
    for name, _, _ in classes:
        times = sorted(t for t, _ in results[name])
        out["classes"][name] = {
            "n": len(times),
            "p10_ms": round(percentile(times, 0.1) * 1000, 1) if times else None,
            "median_ms": round(percentile(times, 0.5) * 1000, 1) if times else None,
            "p90_ms": round(percentile(times, 0.9) * 1000, 1) if times else None,
            "refused": sum(1 for _, s in results[name] if s == "NO"),
        }
    ref_times = [t for t, _ in results[ref[0]]]
    for name, _, _ in classes[1:]:
        times = [t for t, _ in results[name]]
        if not times or not ref_times:
            continue
        d, p = ks_two_sample(ref_times, times)
        out["tests"][name] = {
            "ks_d": round(d, 4),
            "ks_p": p,
            "mw_p": mann_whitney_p(ref_times, times),
        }
    print(json.dumps(out))
    all_refused = all(
        c["refused"] == c["n"] == args.samples for c in out["classes"].values())
    sys.exit(0 if all_refused and not errors else 1)


if __name__ == "__main__":
    main()
