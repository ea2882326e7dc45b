//go:build linux && !amd64

package netns

import "syscall"

// sysSetns is setns(2)'s number; see setns_amd64.go.
const sysSetns = syscall.SYS_SETNS
