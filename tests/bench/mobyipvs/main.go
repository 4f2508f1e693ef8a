// mobyipvs programs an IPVS table with github.com/moby/ipvs (the library
// Docker's overlay load balancer and kube-proxy's IPVS mode use), one
// NewService / NewDestination call at a time, as they do. It reads the same
// `ipvsadm -R` rules file the benchmark feeds ipvsadm, restricted to the
// subset it generates:
//
//	-A -t VIP:PORT -s SCHED
//	-a -t VIP:PORT -r RIP:PORT -i -w WEIGHT
//
// usage: mobyipvs RULES
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/ipvs"
)

func hostPort(s string) (net.IP, uint16, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return nil, 0, err
	}
	ip := net.ParseIP(h).To4()
	if ip == nil {
		return nil, 0, fmt.Errorf("%q: not an IPv4 address", h)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nil, 0, err
	}
	return ip, uint16(port), nil
}

// flags maps "-x value" pairs (and bare "-i") of one rule line.
func flags(fields []string) map[string]string {
	m := map[string]string{}
	for i := 1; i < len(fields); i++ {
		f := fields[i]
		if f == "-i" {
			m[f] = ""
			continue
		}
		if i+1 < len(fields) {
			m[f] = fields[i+1]
			i++
		}
	}
	return m
}

func run(path string) (int, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	h, err := ipvs.New("")
	if err != nil {
		return 0, 0, fmt.Errorf("ipvs.New: %w", err)
	}
	defer h.Close()

	services := map[string]*ipvs.Service{}
	nsvc, ndst := 0, 0
	sc := bufio.NewScanner(f)
	line := 0
	for sc.Scan() {
		line++
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		m := flags(fields)
		vip, vport, err := hostPort(m["-t"])
		if err != nil {
			return nsvc, ndst, fmt.Errorf("line %d: -t: %w", line, err)
		}
		switch fields[0] {
		case "-A":
			s := &ipvs.Service{
				AddressFamily: syscall.AF_INET,
				Protocol:      syscall.IPPROTO_TCP,
				Address:       vip,
				Port:          vport,
				SchedName:     m["-s"],
				Netmask:       0xffffffff,
			}
			if err := h.NewService(s); err != nil {
				return nsvc, ndst, fmt.Errorf("line %d: NewService %s: %w", line, m["-t"], err)
			}
			services[m["-t"]] = s
			nsvc++
		case "-a":
			s, ok := services[m["-t"]]
			if !ok {
				return nsvc, ndst, fmt.Errorf("line %d: service %s not added", line, m["-t"])
			}
			rip, rport, err := hostPort(m["-r"])
			if err != nil {
				return nsvc, ndst, fmt.Errorf("line %d: -r: %w", line, err)
			}
			w, err := strconv.Atoi(m["-w"])
			if err != nil {
				return nsvc, ndst, fmt.Errorf("line %d: -w: %w", line, err)
			}
			var fwd uint32 = ipvs.ConnectionFlagMasq
			if _, ok := m["-i"]; ok {
				fwd = ipvs.ConnectionFlagTunnel
			}
			d := &ipvs.Destination{
				AddressFamily:   syscall.AF_INET,
				Address:         rip,
				Port:            rport,
				Weight:          w,
				ConnectionFlags: fwd,
			}
			if err := h.NewDestination(s, d); err != nil {
				return nsvc, ndst, fmt.Errorf("line %d: NewDestination %s -> %s: %w", line, m["-t"], m["-r"], err)
			}
			ndst++
		default:
			return nsvc, ndst, fmt.Errorf("line %d: unsupported rule %q", line, fields[0])
		}
	}
	return nsvc, ndst, sc.Err()
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: mobyipvs RULES")
		os.Exit(2)
	}
	nsvc, ndst, err := run(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "mobyipvs: %v (after %d services, %d destinations)\n", err, nsvc, ndst)
		os.Exit(1)
	}
	fmt.Printf("moby/ipvs: added %d services, %d destinations\n", nsvc, ndst)
}
