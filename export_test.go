package keyport

// SetCheckPasswordHook makes Login call f before each password hash of a
// known account is computed (nil: none); tests count evaluations with it.
func SetCheckPasswordHook(f func()) { checkPasswordHook = f }
