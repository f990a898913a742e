package web

import (
	"io"
	"os"
)

// spoolBody copies r to a temporary file in dir ("" for the system's) and
// returns it rewound, with the function that closes and removes it. An
// upload is read whole this way before a use case reads it inside a
// database transaction: a slow client must not hold a transaction open
// (on SQLite the one writer, and so every write of the deployment) while
// its bytes trickle in. Errors of r (a MaxBytesReader's limit) come back as
// they are.
func spoolBody(dir, pattern string, r io.Reader) (*os.File, func(), error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, nil, err
	}
	done := func() {
		f.Close()
		os.Remove(f.Name())
	}
	if _, err := io.Copy(f, r); err != nil {
		done()
		return nil, nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		done()
		return nil, nil, err
	}
	return f, done, nil
}
