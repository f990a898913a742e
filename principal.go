package keyport

// Principal is the authenticated caller of a use case.
type Principal struct {
	ProviderID string // set for provider callers
	Admin      bool
	Name       string // for the audit log: user e-mail, token name or operator
	// UserID is the signed-in portal user's ID (browser sessions only).
	UserID string
	// Operator marks a command run on the server by the OS user Name.
	Operator bool
}

// Actor is the audit-log actor string of the principal.
func (p Principal) Actor() string {
	switch {
	case p.Operator:
		return "operator:" + p.Name
	case p.Admin:
		return "admin:" + p.Name
	case p.ProviderID != "":
		return "provider:" + p.ProviderID
	}
	return "system"
}
