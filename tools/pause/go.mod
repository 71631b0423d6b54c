// The sandbox ("pause") program of the local node's pods, built by
// scripts/build-images into a scratch image for containerd. No dependencies.
module relayfleet.dev/pause

go 1.24.0
