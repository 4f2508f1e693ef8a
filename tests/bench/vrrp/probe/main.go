// Command vrrp-probe times a director failover as a client sees it. It runs
// in the client's network namespace, probes a VIP with an HTTP GET on a new
// connection every INTERVAL_MS (each probe on its own, so one that waits for
// a lost SYN does not hold up the next), sets a link of the root namespace
// (a director's bridge port) down or up, and reports when the first probe
// answered by the expected director completed. The link change is an ioctl
// from this process, so no program start lies between it and its timestamp.
//
//	vrrp-probe down|up LINK ADDR:PORT BEFORE AFTER [INTERVAL_MS] [LIMIT_S]
//
// BEFORE is the body the VIP answers before the change: the link changes
// only once a probe started by this run got it. AFTER ends the measurement.
// Prints one line:
//
//	change_at=S change_call_ms=C first_ms=F first_started_ms=T probes=N failed=E errors=KIND:N,... before_after_change=B
//
// change_at: Unix time (s) when the ioctl was called. Setting a link down
// stops its traffic at once (the kernel stops the device's queue and its
// receive path first) and then waits out RCU grace periods, which under
// TCG take up to hundreds of milliseconds (change_call_ms), so the call,
// not its return, is the cut. first_ms: from then to the end of the first
// probe answered AFTER; first_started_ms: when that probe started, on the
// same origin; failed: probes that ended in an error before the run ended,
// by kind; before_after_change: probes answered BEFORE that ended after
// the change. Exits 1 if AFTER never answers within LIMIT_S.
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

type result struct {
	start, end time.Time
	body       string
	err        error
}

func probe(addr string, limit time.Duration, out chan<- result) {
	r := result{start: time.Now()}
	defer func() { r.end = time.Now(); out <- r }()
	c, err := net.DialTimeout("tcp", addr, limit)
	if err != nil {
		r.err = err
		return
	}
	defer c.Close()
	_ = c.SetDeadline(r.start.Add(limit))
	if _, err = io.WriteString(c, "GET / HTTP/1.0\r\nConnection: close\r\n\r\n"); err != nil {
		r.err = err
		return
	}
	reply, err := io.ReadAll(c)
	if err != nil {
		r.err = err
		return
	}
	_, body, ok := strings.Cut(string(reply), "\r\n\r\n")
	if !ok || strings.TrimSpace(body) == "" {
		r.err = fmt.Errorf("no body")
		return
	}
	r.body = strings.TrimSpace(body)
}

// sysSetns is setns(2) on x86-64 (the lab's guest); package syscall lacks it.
const sysSetns = 308

// ifreq is struct ifreq with ifr_flags.
type ifreq struct {
	name  [syscall.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// rootSocket opens a datagram socket in PID 1's network namespace: a
// socket keeps the namespace it was made in, so its interface ioctls reach
// the root namespace's links while the probes stay in the client's.
func rootSocket() (int, error) {
	runtime.LockOSThread()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer own.Close()
	root, err := os.Open("/proc/1/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer root.Close()
	if _, _, e := syscall.Syscall(sysSetns, root.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		runtime.UnlockOSThread()
		return -1, fmt.Errorf("setns root: %w", e)
	}
	fd, serr := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if _, _, e := syscall.Syscall(sysSetns, own.Fd(), syscall.CLONE_NEWNET, 0); e != 0 {
		// The thread stays locked and ends with this goroutine: no other
		// goroutine runs in the wrong namespace.
		return -1, fmt.Errorf("setns back: %w", e)
	}
	runtime.UnlockOSThread()
	return fd, serr
}

func ioctl(fd int, req uintptr, ifr *ifreq) error {
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(unsafe.Pointer(ifr))); e != 0 {
		return e
	}
	return nil
}

// kind names a probe's failure in a word.
func kind(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "unreachable"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timeout"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

func list(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s:%d", k, m[k])
	}
	return strings.Join(parts, ",")
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "vrrp-probe: "+format+"\n", a...)
	os.Exit(2)
}

func main() {
	a := os.Args[1:]
	if len(a) < 5 || (a[0] != "down" && a[0] != "up") {
		fail("usage: vrrp-probe down|up LINK ADDR:PORT BEFORE AFTER [INTERVAL_MS] [LIMIT_S]")
	}
	up, link, addr, before, after := a[0] == "up", a[1], a[2], a[3], a[4]
	interval, limit := 10*time.Millisecond, 60*time.Second
	if len(a) > 5 {
		ms, err := strconv.Atoi(a[5])
		if err != nil || ms <= 0 {
			fail("INTERVAL_MS %q", a[5])
		}
		interval = time.Duration(ms) * time.Millisecond
	}
	if len(a) > 6 {
		s, err := strconv.Atoi(a[6])
		if err != nil || s <= 0 {
			fail("LIMIT_S %q", a[6])
		}
		limit = time.Duration(s) * time.Second
	}
	fd, err := rootSocket()
	if err != nil {
		fail("socket in the root namespace: %v", err)
	}
	var ifr ifreq
	if len(link) >= len(ifr.name) {
		fail("link name %q too long", link)
	}
	copy(ifr.name[:], link)
	if err := ioctl(fd, syscall.SIOCGIFFLAGS, &ifr); err != nil {
		fail("flags of %s: %v", link, err)
	}

	results := make(chan result, 1024)
	go func() {
		t := time.NewTicker(interval)
		for range t.C {
			go probe(addr, 5*time.Second, results)
		}
	}()
	go probe(addr, 5*time.Second, results)

	var changed time.Time
	var callMs float64
	probes, failed, beforeAfter := 0, 0, 0
	errs := map[string]int{}
	deadline := time.After(limit)
	for {
		var r result
		select {
		case r = <-results:
		case <-deadline:
			want := before
			if !changed.IsZero() {
				want = after
			}
			fmt.Printf("no answer %q within %s (link changed: %t): probes=%d failed=%d errors=%s before_after_change=%d\n",
				want, limit, !changed.IsZero(), probes, failed, list(errs), beforeAfter)
			os.Exit(1)
		}
		probes++
		if r.err != nil {
			failed++
			errs[kind(r.err)]++
			continue
		}
		if changed.IsZero() {
			if r.body != before {
				continue
			}
			if up {
				ifr.flags |= syscall.IFF_UP
			} else {
				ifr.flags &^= syscall.IFF_UP
			}
			changed = time.Now()
			if err := ioctl(fd, syscall.SIOCSIFFLAGS, &ifr); err != nil {
				fail("set %s %s: %v", link, a[0], err)
			}
			callMs = float64(time.Since(changed).Microseconds()) / 1000
			continue
		}
		if r.body == before && r.end.After(changed) {
			beforeAfter++
		}
		if r.body == after && r.end.After(changed) {
			ms := func(t time.Time) float64 { return float64(t.Sub(changed).Microseconds()) / 1000 }
			fmt.Printf("change_at=%.6f change_call_ms=%.3f first_ms=%.1f first_started_ms=%.1f probes=%d failed=%d errors=%s before_after_change=%d\n",
				float64(changed.UnixMicro())/1e6, callMs, ms(r.end), ms(r.start), probes, failed, list(errs), beforeAfter)
			os.Exit(0)
		}
	}
}
