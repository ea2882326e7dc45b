module streamspace.dev/e2e

go 1.26.0

require streamspace.dev/libs v0.0.0

replace streamspace.dev/libs => ../libs

// The patched quic-go (libs/third_party/quic-go/README.md); go.work uses the same copy.
replace github.com/quic-go/quic-go => ../libs/third_party/quic-go
