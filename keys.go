package keyport

// KeySource says where a domain's first keys come from.
type KeySource string

const (
	// KeyDerived: derived in the HSM from the batch master key, never stored.
	KeyDerived KeySource = "derived"
	// KeyImported: supplied by the manufacturer, KWP-wrapped under the batch
	// transport key, and stored only in that wrapped form.
	KeyImported KeySource = "imported"
)

// KeyUsage names one key of an SCP03 key set.
type KeyUsage string

// The three keys of an SCP03 key set, in key-identifier order 1, 2, 3.
const (
	UsageENC KeyUsage = "enc"
	UsageMAC KeyUsage = "mac"
	UsageDEK KeyUsage = "dek"
)

// Usages is the SCP03 key set in key-identifier order.
var Usages = []KeyUsage{UsageENC, UsageMAC, UsageDEK}
