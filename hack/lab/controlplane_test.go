package lab

import "testing"

// TestFreePortNeverRepeats asks for many ports: the kernel offers a port
// again soon after its listener closed (here, as soon as the third
// request), and each must go to one lab process only.
func TestFreePortNeverRepeats(t *testing.T) {
	given := map[int]int{}
	for i := range 1000 {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if j, ok := given[port]; ok {
			t.Fatalf("port %d handed out twice: requests %d and %d", port, j, i)
		}
		given[port] = i
	}
}
