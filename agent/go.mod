module streamspace.dev/agent

go 1.26.0

require streamspace.dev/libs v0.0.0

replace streamspace.dev/libs => ../libs
