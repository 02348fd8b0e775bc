package identity

import (
	"os"
	"path/filepath"

	"github.com/herald-im/herald/config"
	"github.com/herald-im/herald/mailer"
)

// Brands, as in sydent: each directory under email.templates_dir holding
// validation templates is a brand, which requestToken?brand=NAME picks; no
// brand, or one without templates, gets email.default_brand's (or those at
// the top of email.templates_dir).

// loadValidationBrands loads and checks every brand's validation templates.
func loadValidationBrands(opts ValidationOptions) (map[string]*mailer.Templates, error) {
	out := map[string]*mailer.Templates{}
	if opts.TemplatesDir == "" {
		return out, nil
	}
	entries, err := os.ReadDir(opts.TemplatesDir)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		dir := filepath.Join(opts.TemplatesDir, e.Name())
		if !e.IsDir() || !config.ValidBrand(e.Name()) || !hasValidationTemplate(dir) {
			continue
		}
		t, err := mailer.LoadTemplates(DefaultTemplates(), dir, "validation")
		if err != nil {
			return nil, err
		}
		if err := t.Check(validationData("user@example.org", "sample-token", "https://id.example.org/link", "sample-sid", opts.Brand)); err != nil {
			return nil, err
		}
		out[e.Name()] = t
	}
	return out, nil
}

func hasValidationTemplate(dir string) bool {
	for _, n := range []string{"validation.eml", "validation.subject.txt", "validation.txt", "validation.html"} {
		if _, err := os.Stat(filepath.Join(dir, n)); err == nil {
			return true
		}
	}
	return false
}

// emailFor is the validation template set for a requested brand.
func (v *validation) emailFor(brand string) *mailer.Templates {
	if t := v.brands[brand]; t != nil && brand != "" {
		return t
	}
	return v.email
}
