module instant-orders/benchmarks/loadgen

go 1.22
