package admin

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/invites"
	"github.com/herald-im/herald/mailer"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// pageNames lists every page; each is templates/<name>.html inside the layout.
var pageNames = []string{
	"login", "dashboard", "invites", "invite", "outbox", "mail", "deliveries", "delivery",
	"bindings", "erase", "keys", "settings", "audit", "mailbox", "devmail", "error",
}

type pageTemplate = *template.Template

var funcs = template.FuncMap{
	"time":  timeTag,
	"ago":   ago,
	"chart": chartSVG,
	"short": func(n int, s string) string {
		if r := []rune(s); len(r) > n {
			return string(r[:n-1]) + "…"
		}
		return s
	},
	"stateClass": func(s string) string {
		switch s {
		case invites.StateResolved, string(mailer.Sent), string(invites.DeliveryDelivered), "current", "ok":
			return "ok"
		case invites.StateFailed, invites.StateRevoked, "retired", "error":
			return "bad"
		case invites.StateExpired, invites.StateDeclined:
			return "muted"
		}
		return "wait"
	},
	"add": func(a, b int) int { return a + b },
	"csrfField": func(tok string) template.HTML {
		return template.HTML(`<input type="hidden" name="` + csrfField + `" value="` + template.HTMLEscapeString(tok) + `">`)
	},
}

func parseTemplates() (map[string]pageTemplate, error) {
	out := map[string]pageTemplate{}
	for _, name := range pageNames {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("admin: template %s: %w", name, err)
		}
		if t.Lookup("content") == nil {
			return nil, fmt.Errorf("admin: template %s defines no content", name)
		}
		out[name] = t
	}
	return out, nil
}

// view is what every page template receives.
type view struct {
	Title   string
	Nav     string
	User    string
	CSRF    string
	Notice  string
	Mailbox bool
	Data    any
}

// notices are the fixed messages a redirect after an action may ask for.
var notices = map[string]string{
	"revoked":   "The invite was revoked.",
	"resent":    "The invite email was queued again.",
	"retried":   "Queued for another attempt.",
	"dropped":   "Dropped from the queue.",
	"unbound":   "The address was unbound.",
	"erased":    "Everything Herald held about the address was erased.",
	"rotated":   "A new signing key was made current.",
	"retired":   "The key was retired: it is no longer published.",
	"loggedout": "You are logged out.",
	"bulk":      "Bulk action done.",
}

func (h *Handler) render(c echo.Context, status int, page, title, nav string, data any) error {
	t, ok := h.pages[page]
	if !ok {
		return fmt.Errorf("admin: no page %q", page)
	}
	v := view{Title: title, Nav: nav, User: who(c), Mailbox: h.opts.Mailbox != nil, Data: data, Notice: notices[c.QueryParam("ok")]}
	if sid, ok := c.Get(ctxSession).(string); ok {
		v.CSRF = h.csrfToken(sid)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", v); err != nil {
		return err
	}
	return c.HTMLBlob(status, buf.Bytes())
}

func (h *Handler) static(c echo.Context) error {
	name := strings.TrimPrefix(c.Param("*"), "/")
	raw, err := fs.ReadFile(staticFS, "static/"+name)
	if err != nil || strings.Contains(name, "..") {
		return echo.ErrNotFound
	}
	ct := "application/octet-stream"
	switch {
	case strings.HasSuffix(name, ".css"):
		ct = "text/css; charset=utf-8"
	case strings.HasSuffix(name, ".js"):
		ct = "text/javascript; charset=utf-8"
	case strings.HasSuffix(name, ".svg"):
		ct = "image/svg+xml"
	}
	c.Response().Header().Set("Cache-Control", "public, max-age=3600")
	return c.Blob(http.StatusOK, ct, raw)
}

// timeTag renders t as UTC ISO text inside <time datetime>; admin.js rewrites
// the text in the viewer's local time.
func timeTag(t time.Time) template.HTML {
	if t.IsZero() {
		return "—"
	}
	u := t.UTC()
	return template.HTML(`<time datetime="` + u.Format(time.RFC3339) + `">` + u.Format("2006-01-02 15:04:05") + ` UTC</time>`)
}

func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return plural(int(d/time.Minute), "minute")
	case d < 48*time.Hour:
		return plural(int(d/time.Hour), "hour")
	}
	return plural(int(d/(24*time.Hour)), "day")
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// chartSVG draws invites created and resolved per day as grouped bars.
// Everything in it is numbers and fixed text, so it is safe as HTML.
func chartSVG(days []invites.DayCount) template.HTML {
	if len(days) == 0 {
		return ""
	}
	const w, hgt, left, bottom, top = 720.0, 220.0, 36.0, 24.0, 10.0
	peak := 1
	for _, d := range days {
		peak = max(peak, d.Created, d.Resolved)
	}
	// A round scale: 2, 4, 10, 20, 40, 100 ...
	scale := 2
	for scale < peak {
		switch {
		case scale*2 >= peak:
			scale *= 2
		case scale*5 >= peak:
			scale *= 5
		default:
			scale *= 10
		}
	}
	plotW, plotH := w-left-4, hgt-bottom-top
	slot := plotW / float64(len(days))
	bw := slot * 0.38
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %.0f %.0f" role="img" aria-label="Invites created and resolved per day" xmlns="http://www.w3.org/2000/svg">`, w, hgt)
	for i := 0; i <= 2; i++ {
		y := top + plotH - plotH*float64(i)/2
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" class="grid"/>`, left, w-4, y, y)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis" text-anchor="end">%g</text>`, left-6, y+4, float64(scale*i)/2)
	}
	for i, d := range days {
		x := left + slot*float64(i) + slot*0.1
		for j, v := range []int{d.Created, d.Resolved} {
			bh := plotH * float64(v) / float64(scale)
			cls, what := "created", "created"
			if j == 1 {
				cls, what = "resolved", "resolved"
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" class="%s"><title>%s: %d %s</title></rect>`,
				x+float64(j)*bw, top+plotH-bh, bw, bh, cls, d.Day.UTC().Format("2006-01-02"), v, what)
		}
		if step := max(1, len(days)/7); i%step == 0 || (i == len(days)-1 && i%step > step/2) {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" class="axis" text-anchor="middle">%s</text>`, x+bw, hgt-6, d.Day.UTC().Format("01-02"))
		}
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

// settingRow is one line of the effective configuration.
type settingRow struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

var secretWords = []string{"password", "secret", "token", "api_key", "private"}

// settingsRows flattens the configuration into yaml-keyed rows. Values whose
// type masks itself (config.Secret) print masked; keys that look secret are
// masked whatever their type.
func settingsRows(cfg any) []settingRow {
	var rows []settingRow
	var walk func(prefix string, v reflect.Value)
	walk = func(prefix string, v reflect.Value) {
		if s, ok := v.Interface().(fmt.Stringer); ok && v.Kind() == reflect.String {
			rows = append(rows, settingRow{prefix, s.String()})
			return
		}
		switch v.Kind() {
		case reflect.Pointer:
			if !v.IsNil() {
				walk(prefix, v.Elem())
			}
			return
		case reflect.Struct:
			if s, ok := v.Interface().(fmt.Stringer); ok {
				rows = append(rows, settingRow{prefix, s.String()})
				return
			}
			t := v.Type()
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				if !f.IsExported() {
					continue
				}
				tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
				if tag == "-" {
					continue
				}
				key := prefix
				if tag != "" {
					key = join(prefix, tag)
				} else if !f.Anonymous && !strings.Contains(f.Tag.Get("yaml"), "inline") {
					key = join(prefix, strings.ToLower(f.Name))
				}
				walk(key, v.Field(i))
			}
			return
		case reflect.Map:
			ks := v.MapKeys()
			sort.Slice(ks, func(i, j int) bool { return fmt.Sprint(ks[i]) < fmt.Sprint(ks[j]) })
			if len(ks) == 0 {
				rows = append(rows, settingRow{prefix, "{}"})
			}
			for _, k := range ks {
				walk(join(prefix, fmt.Sprint(k)), v.MapIndex(k))
			}
			return
		case reflect.Slice:
			if v.Len() == 0 {
				rows = append(rows, settingRow{prefix, "[]"})
			}
			for i := 0; i < v.Len(); i++ {
				walk(fmt.Sprintf("%s[%d]", prefix, i), v.Index(i))
			}
			return
		}
		val := fmt.Sprint(v.Interface())
		if s, ok := v.Interface().(fmt.Stringer); ok {
			val = s.String()
		}
		rows = append(rows, settingRow{prefix, val})
	}
	walk("", reflect.ValueOf(cfg))
	for i, r := range rows {
		low := strings.ToLower(r.Key)
		for _, w := range secretWords {
			if strings.Contains(low, w) && r.Value != "" && r.Value != "[]" && r.Value != "{}" && !strings.HasSuffix(low, "_file") {
				rows[i].Value = "********"
			}
		}
	}
	return rows
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }

// safeBack accepts only a local console path as a place to return to.
func safeBack(s, fallback string) string {
	if strings.HasPrefix(s, Prefix+"/") && !strings.HasPrefix(s, "//") && !strings.ContainsAny(s, "\\\r\n") && !strings.Contains(s, "/../") {
		return s
	}
	if s == Prefix {
		return s
	}
	return fallback
}

func encodeQuery(m map[string][]string) string { return url.Values(m).Encode() }
