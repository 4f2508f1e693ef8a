module tunlb.io/bench/vrrp-probe

go 1.22
