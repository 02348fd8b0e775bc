package sydent

import "fmt"

// Conversion reports a template conversion.
type Conversion struct{ Lines []string }

func (c *Conversion) String() string { return "" }

// ConvertTemplates converts sydent's templates in src into Herald templates in dst.
func ConvertTemplates(src, dst string, cfg *Config) (*Conversion, error) {
	return nil, fmt.Errorf("not yet")
}
