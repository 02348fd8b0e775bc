package admin

import "github.com/herald-im/herald/upstream"

// settingsData is the settings page: the effective configuration, then the
// upstream identity servers' status (read-only).
type settingsData struct {
	Rows      []settingRow
	Upstreams []upstream.Status
}

func (h *Handler) upstreams() []upstream.Status {
	if h.opts.Upstreams == nil {
		return nil
	}
	return h.opts.Upstreams()
}
