package controller

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"

	"github.com/routemode/routemode/internal/peertable"
)

func TestPeerTableHandler(t *testing.T) {
	for name, tc := range map[string]struct {
		rows   []peertable.Row
		method string
		code   int
		want   []peertable.Row
	}{
		"table": {rows: []peertable.Row{{Node: "a", NodeIP: "192.168.0.1", Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 80},
			{Node: "b", Message: "not directly reachable: via 192.168.0.254"}}, method: http.MethodGet, code: http.StatusOK,
			want: []peertable.Row{{Node: "a", NodeIP: "192.168.0.1", Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 80},
				{Node: "b", Message: "not directly reachable: via 192.168.0.254"}}},
		"before the first reconcile": {method: http.MethodGet, code: http.StatusOK, want: []peertable.Row{}},
		"not a read":                 {method: http.MethodPost, code: http.StatusMethodNotAllowed},
	} {
		t.Run(name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			PeerTableHandler(func() []peertable.Row { return tc.rows }).ServeHTTP(rec, httptest.NewRequest(tc.method, PeersPath, nil))
			if rec.Code != tc.code {
				t.Fatalf("status %d, want %d", rec.Code, tc.code)
			}
			if tc.code != http.StatusOK {
				return
			}
			var got []peertable.Row
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("served %+v, want %+v", got, tc.want)
			}
		})
	}
}
