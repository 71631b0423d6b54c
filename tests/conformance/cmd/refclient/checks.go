package main

// checks lists every check in the order it runs. Each wire check uses its
// own fresh pair of clients, keys and sockets, so checks do not interact.
// Every "nothing arrives" step is followed by a step that must succeed, so
// that silence from a dead server can never pass.
func (h *harness) checks() []check {
	return []check{
		{"api_healthz", h.checkHealthz},
		{"api_allocate", h.checkAllocate},
		{"api_lamport_increases", h.checkLamportIncreases},
		{"api_reject_malformed_json", h.checkRejectMalformedJSON},
		{"api_reject_wrong_key_count", h.checkRejectWrongKeyCount},
		{"api_reject_malformed_key", h.checkRejectMalformedKey},
		{"api_reject_server_key", h.checkRejectServerKey},
		{"realloc_before_bind_same", h.checkReallocBeforeBind},
		{"bind_handshake", h.checkBindHandshake},
		{"relay_both_ways", h.checkRelayBothWays},
		{"bind_retransmit_same_challenge", h.checkBindRetransmit},
		{"wrong_answer_no_bind", h.checkWrongAnswer},
		{"short_answer_dropped", h.checkShortAnswer},
		{"bind_from_second_source_dropped", h.checkBindSecondSource},
		{"answer_from_second_source_dropped", h.checkAnswerSecondSource},
		{"data_before_bind_dropped", h.checkDataBeforeBind},
		{"data_from_third_address_dropped", h.checkDataThirdAddress},
		{"unknown_vni_no_reply", h.checkUnknownVNI},
		{"unknown_sender_key_no_reply", h.checkUnknownSender},
		{"malformed_packets_ignored", h.checkMalformed},
		{"control_after_client_bound_ignored", h.checkControlAfterClientBound},
		{"control_after_endpoint_bound_ignored", h.checkControlAfterEndpointBound},
		{"realloc_after_bind", h.checkReallocAfterBind},
		{"ipv6_bind_and_relay", h.checkIPv6},
	}
}
