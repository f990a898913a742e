package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
)

// pgBackupSeed is a well-formed PostgreSQL backup of schema version v
// whose tables hold the bytes data (not a COPY stream: the parser does not
// read them), with one sequence.
func pgBackupSeed(t testing.TB, v int, data string) []byte {
	tables, err := pgTables(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	b := newPGBackupWriter(&out)
	b.header(v)
	for _, tb := range tables {
		b.tableHeader(tb)
		c := &chunker{b: b}
		c.Write([]byte(data))
		c.close()
	}
	b.sequence(pgSequence{table: "batches", column: "id", called: true, last: 3})
	if err := b.end(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// readPGBackup reads a file anyone may have written: it must never panic,
// it fails only with one of the errors it documents, and it accepts a
// file only when the file ends in the SHA-256 of all that comes before,
// with a schema version this code knows.
func FuzzReadPGBackup(f *testing.F) {
	valid := pgBackupSeed(f, LatestVersion(), "PGCOPY\n\xff\r\n\x00")
	for _, s := range [][]byte{
		valid,
		pgBackupSeed(f, 1, ""),
		valid[:len(valid)/2],
		valid[:len(valid)-1],
		append(bytes.Clone(valid), 0),
		[]byte(pgBackupMagic),
		[]byte("PGDMP\x01\x0f\x00"),
		[]byte(sqliteMagic + "rest"),
		[]byte("not a backup"),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, file []byte) {
		v, tables, err := readPGBackup(context.Background(), bytes.NewReader(file), discardSink{})
		if err != nil {
			known := []error{ErrBackupDamaged, ErrSchemaMismatch, ErrSchemaTooNew, ErrPGDumpArchive, errNotPGBackup}
			for _, k := range known {
				if errors.Is(err, k) {
					return
				}
			}
			if strings.HasPrefix(err.Error(), "an SQLite backup") {
				return
			}
			t.Fatalf("an error none of the documented ones: %v", err)
		}
		if len(file) < sha256.Size {
			t.Fatalf("accepted %d bytes", len(file))
		}
		sum := sha256.Sum256(file[:len(file)-sha256.Size])
		if !bytes.Equal(sum[:], file[len(file)-sha256.Size:]) {
			t.Fatal("accepted a file whose hash does not match")
		}
		if v < 1 || v > LatestVersion() || len(tables) == 0 {
			t.Fatalf("accepted version %d with %d tables", v, len(tables))
		}
	})
}
