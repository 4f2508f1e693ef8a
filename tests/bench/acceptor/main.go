// Command acceptor accepts TCP connections on the given addresses and closes
// each at once: a real server for thousands of health probes a second
// without a process per connection (busybox httpd forks one each). On
// SIGUSR1 it prints, per client address, the connections accepted so far
// ("accepted ADDR N"), so a benchmark counts the probes each checker made.
//
//	acceptor ADDR...   e.g. acceptor :80
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
)

var (
	mu       sync.Mutex
	accepted = map[string]uint64{}
)

func serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "acceptor:", err)
			continue
		}
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			mu.Lock()
			accepted[a.IP.String()]++
			mu.Unlock()
		}
		c.Close()
	}
}

func report() {
	mu.Lock()
	defer mu.Unlock()
	addrs := make([]string, 0, len(accepted))
	for a := range accepted {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		fmt.Printf("accepted %s %d\n", a, accepted[a])
	}
	fmt.Println("accepted end")
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: acceptor ADDR...")
		os.Exit(2)
	}
	for _, a := range os.Args[1:] {
		l, err := net.Listen("tcp4", a)
		if err != nil {
			fmt.Fprintln(os.Stderr, "acceptor:", err)
			os.Exit(1)
		}
		go serve(l)
	}
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	for range usr1 {
		report()
	}
}
