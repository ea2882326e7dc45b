package netns

// sysSetns is setns(2)'s number on amd64, where the frozen syscall package lacks
// SYS_SETNS; golang.org/x/sys would have it, but is not worth a dependency of the e2e
// module for one constant.
const sysSetns = 308
