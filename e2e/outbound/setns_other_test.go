//go:build linux && !amd64

package outbound

import "syscall"

// sysSetns is setns(2)'s number; see setns_amd64_test.go.
const sysSetns = syscall.SYS_SETNS
