package admin

import "time"

// UpstreamStatus is one upstream identity server (lookup.upstream) as the
// settings page shows it: whether Herald is registered there, and its
// question, hit and failure counts since start.
type UpstreamStatus struct {
	BaseURL    string    `json:"base_url"`
	State      string    `json:"state"` // "ok", "not registered yet", "M_TERMS_NOT_SIGNED", "failing"
	LastError  string    `json:"last_error,omitempty"`
	Calls      int64     `json:"calls"`
	Hits       int64     `json:"hits"`
	Failures   int64     `json:"failures"`
	Registered time.Time `json:"registered,omitzero"`
}

// settingsData is the settings page: the effective configuration, then the
// upstream identity servers' status (read-only).
type settingsData struct {
	Rows      []settingRow
	Upstreams []UpstreamStatus
}

func (h *Handler) upstreams() []UpstreamStatus {
	if h.opts.Upstreams == nil {
		return nil
	}
	return h.opts.Upstreams()
}
