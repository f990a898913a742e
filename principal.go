package keyport

// Principal is the authenticated caller of a use case.
type Principal struct {
	ProviderID string // set for provider callers
	Admin      bool
	Name       string // for the audit log: user e-mail or token name
}

// Actor is the audit-log actor string of the principal.
func (p Principal) Actor() string {
	switch {
	case p.Admin:
		return "admin:" + p.Name
	case p.ProviderID != "":
		return "provider:" + p.ProviderID
	}
	return "system"
}
