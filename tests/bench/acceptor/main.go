// Command acceptor accepts TCP connections on the given addresses and closes
// each at once: a real server for thousands of health probes a second
// without a process per connection (busybox httpd forks one each).
//
//	acceptor ADDR...   e.g. acceptor :80
package main

import (
	"fmt"
	"net"
	"os"
)

func serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "acceptor:", err)
			continue
		}
		c.Close()
	}
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
	select {}
}
