package server

import (
	"context"
	"io"

	"github.com/herald-im/herald/internal/control"
)

// ControlHandler runs a command sent to the control socket against the
// running App (cmd/herald provides it: the same code runs the command when
// Herald is stopped).
// stream carries data back to the client (a backup).
type ControlHandler func(ctx context.Context, a *App, req control.Request, stream io.Writer) control.Response

// serveControl listens on data_dir/control.sock while Herald serves, so
// `herald invites|admin|keys|lookup|backup` work without stopping it. A
// socket that cannot be made is logged, not fatal: serving the identity API
// matters more, and the commands then say to stop Herald.
func (a *App) serveControl(ctx context.Context) {
	if a.control == nil {
		return
	}
	path := control.Path(a.cfg.DataDir)
	ln, err := control.Listen(path)
	if err != nil {
		a.log.Error("no control socket: commands need Herald stopped", "err", err)
		return
	}
	a.log.Info("control socket ready", "path", path)
	// Close stops the socket too, even when serving ended without ctx
	// being done (a listener error): chain its cancel onto Start's.
	ctx, cancel := context.WithCancel(ctx)
	if prev := a.bgCancel; prev != nil {
		a.bgCancel = func() { cancel(); prev() }
	} else {
		a.bgCancel = cancel
	}
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		control.Serve(ctx, ln, func(ctx context.Context, req control.Request, stream io.Writer) control.Response {
			return a.control(ctx, a, req, stream)
		}, a.log)
	}()
}
