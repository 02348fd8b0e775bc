package invites

import (
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/labstack/echo/v4"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/mailer"
)

// Brands, as in sydent: each directory under email.templates_dir that holds
// invite templates is a brand; a store-invite request picks one with the
// query parameter ?brand=NAME (sydent's), kept with the invite in its extra
// fields; no brand, or one without a directory, gets email.default_brand's
// templates (or, with no default brand, the top of email.templates_dir).

// loadBrands loads the top-level templates and every brand's with load.
func loadBrands(c *config.Config, load func(dir string) (*mailer.Templates, error)) (*mailTemplates, error) {
	mt := &mailTemplates{brands: map[string]*mailer.Templates{}}
	var err error
	if mt.t, err = load(c.Email.TemplatesDir); err != nil {
		return nil, err
	}
	if c.Email.TemplatesDir == "" {
		return mt, nil
	}
	entries, err := os.ReadDir(c.Email.TemplatesDir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		dir := filepath.Join(c.Email.TemplatesDir, e.Name())
		if !e.IsDir() || !config.ValidBrand(e.Name()) || !hasInviteTemplate(dir) {
			continue
		}
		if mt.brands[e.Name()], err = load(dir); err != nil {
			return nil, err
		}
	}
	if b := c.Email.DefaultBrand; b != "" && mt.brands[b] != nil {
		mt.t = mt.brands[b]
	}
	return mt, nil
}

func hasInviteTemplate(dir string) bool {
	for _, n := range []string{"invite.eml", "invite.subject.txt", "invite.txt", "invite.html"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return true
		}
	}
	return false
}

// forInvite is the template set for inv's brand.
func (mt *mailTemplates) forInvite(inv *Invite) *mailer.Templates {
	var brand string
	if raw, ok := inv.Extra["brand"]; ok && json.Unmarshal(raw, &brand) == nil {
		if t := mt.brands[brand]; t != nil {
			return t
		}
	}
	return mt.t
}

// brandFromQuery copies sydent's ?brand= query parameter into the request
// fields (unless the body names one), where it stays with the invite.
func brandFromQuery(c echo.Context, fields map[string]json.RawMessage) {
	b := c.QueryParam("brand")
	if b == "" || !config.ValidBrand(b) {
		return
	}
	if _, ok := fields["brand"]; !ok {
		raw, _ := json.Marshal(b)
		fields["brand"] = raw
	}
}
