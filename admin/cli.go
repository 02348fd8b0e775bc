package admin

// RecordCLI writes an audit log entry for an action taken with a herald
// command (through the control socket of the running server, or on the
// stopped data dir), so the console's audit log shows what the CLI changed
// too. who is the command's "cli:USER".
func (h *Handler) RecordCLI(who, action, target, detail string, ok bool) {
	h.audit(who, action, target, detail, ok)
}
