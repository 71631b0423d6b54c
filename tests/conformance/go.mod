module relayfleet.test/conformance

go 1.24.0

require (
	go4.org/mem v0.0.0-20240501181205-ae6ca9944745
	tailscale.com v1.84.0
)

require (
	github.com/go-json-experiment/json v0.0.0-20250223041408-d3c622f1b874 // indirect
	golang.org/x/crypto v0.37.0 // indirect
	golang.org/x/net v0.36.0 // indirect
	golang.org/x/sys v0.32.0 // indirect
)
