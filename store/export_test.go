package store

import "context"

// ExecForTest runs a raw statement on the writer, for tests that need a
// database in a state the API cannot produce.
func ExecForTest(s *Store, query string, args ...any) error {
	return s.w.WithContext(context.Background()).Exec(query, args...).Error
}

// QueryStringsForTest returns the first column of query's rows as strings.
func QueryStringsForTest(s *Store, query string, args ...any) ([]string, error) {
	var out []string
	err := s.w.WithContext(context.Background()).Raw(query, args...).Scan(&out).Error
	return out, err
}

// ColumnsForTest returns every table's columns in declaration order.
func ColumnsForTest(s *Store) (map[string][]string, error) {
	db := s.w.WithContext(context.Background())
	out := map[string][]string{}
	if s.dialect == dialectPostgres {
		var rows []struct{ TableName, ColumnName string }
		err := db.Raw(`SELECT table_name, column_name FROM information_schema.columns
			WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position`).Scan(&rows).Error
		for _, r := range rows {
			out[r.TableName] = append(out[r.TableName], r.ColumnName)
		}
		return out, err
	}
	var tables []string
	if err := db.Raw(`SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'`).
		Scan(&tables).Error; err != nil {
		return nil, err
	}
	for _, t := range tables {
		var cols []struct{ Name string }
		if err := db.Raw(`SELECT name FROM pragma_table_info(?) ORDER BY cid`, t).Scan(&cols).Error; err != nil {
			return nil, err
		}
		for _, c := range cols {
			out[t] = append(out[t], c.Name)
		}
	}
	return out, nil
}

// CheckpointedFramesForTest is how many WAL frames the SQLite checkpointer
// copied into the database file so far (-1 without one).
func CheckpointedFramesForTest(s *Store) int64 {
	if s.checkpoints == nil {
		return -1
	}
	return s.checkpoints.frames.Load()
}

// ClaimGuessesForTest returns how many claim batches were committed on a
// guessed audit head, and how many guesses were wrong (PostgreSQL).
func ClaimGuessesForTest(s *Store) (hits, misses uint64) {
	return s.guessHits.Load(), s.guessMisses.Load()
}

// GuessSkip is how many batches read the head after a wrong guess.
const GuessSkip = guessSkip
