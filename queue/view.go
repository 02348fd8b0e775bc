package queue

import "time"

// Read models of a queue as the admin console shows it (the mail outbox and
// the onbind deliveries alike): their JSON is the console API's.

// AttemptView is one attempt as the console shows it.
type AttemptView struct {
	At        time.Time `json:"at"`
	Reply     string    `json:"reply"` // the server's answer, or the error
	OK        bool      `json:"ok"`
	Temporary bool      `json:"temporary,omitempty"`
}

// StatsView summarises a queue: Done counts sent mails or delivered
// deliveries; FailedAttempts24h the attempts that failed in the last day.
type StatsView struct {
	Pending           int `json:"pending"`
	Done              int `json:"done"`
	Failed            int `json:"failed"`
	FailedAttempts24h int `json:"failed_attempts_24h"`
}

// ViewFilter selects the entries of a queue the console lists: State is the
// owner's name of a state (empty: all), Offset and Limit page them.
type ViewFilter struct {
	State  string `json:"state,omitempty"`
	Limit  int    `json:"limit"`
	Offset int    `json:"offset"`
}
