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
	// Owner is, for an issuer-admin API token, the identity of who made it
	// ("" for tokens made before tokens had owners), and OwnerUserID the
	// admin user behind it, if a portal user made it or the token it was
	// made with.
	Owner       string
	OwnerUserID string
	// Token marks a principal authenticated by an API token; TokenID is
	// its ID, for admin tokens.
	Token   bool
	TokenID string

	// check, set by AuthenticateClaim from what the token was a short
	// time ago, is the token the caller's claim must find live when it is
	// written (claimtoken.go).
	check *tokenCheck
}

// Identity is who the principal is for dual control: the same person
// whichever of their sessions or tokens they use. An admin token stands for
// its owner, so that nobody approves their own request with a second token;
// an ownerless token has no identity ("") and takes no part.
func (p Principal) Identity() string {
	if p.Token {
		return p.Owner
	}
	return p.Actor()
}

// Actor is the audit-log actor string of the principal. An admin token is
// named by its ID, never by its name: a name is free text, and a token
// called after an admin user must not act in that user's name.
func (p Principal) Actor() string {
	switch {
	case p.Operator:
		return "operator:" + p.Name
	case p.Admin && p.Token:
		return "admin-token:" + p.TokenID
	case p.Admin:
		return "admin:" + p.Name
	case p.ProviderID != "":
		return "provider:" + p.ProviderID
	}
	return "system"
}
