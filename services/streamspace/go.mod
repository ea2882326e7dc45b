module streamspace.dev/services/streamspace

go 1.26.0

require (
	streamspace.dev/libs v0.0.0
	streamspace.dev/services/agent-gateway v0.0.0
	streamspace.dev/services/catalog v0.0.0
	streamspace.dev/services/identity v0.0.0
	streamspace.dev/services/scheduler v0.0.0
	streamspace.dev/services/sessions v0.0.0
	streamspace.dev/tenants v0.0.0
)

replace (
	streamspace.dev/libs => ../../libs
	streamspace.dev/services/agent-gateway => ../agent-gateway
	streamspace.dev/services/catalog => ../catalog
	streamspace.dev/services/identity => ../identity
	streamspace.dev/services/scheduler => ../scheduler
	streamspace.dev/services/sessions => ../sessions
	streamspace.dev/tenants => ../../tenants
)
