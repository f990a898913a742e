package keyport_test

import (
	"testing"

	"github.com/keyport/keyport/store/storetest"
)

func TestMain(m *testing.M) { storetest.Main(m) }
