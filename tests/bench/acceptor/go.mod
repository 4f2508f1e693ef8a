module tunlb.io/bench/acceptor

go 1.22
