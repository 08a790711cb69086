package tribe

import "testing"

// The poller looks again only while another node of the process polls,
// stops while its looks find nothing, and tries again after spinProbe
// waits.
func TestSpinnerLooksAgainOnlyWhileItPays(t *testing.T) {
	before := pollers.Load()
	pollers.Add(2 - before)
	defer pollers.Add(before - 2)

	s := spinner{credit: spinCredit}
	if !s.again(0) || !s.again(spinLooks-1) || s.again(spinLooks) {
		t.Fatalf("with credit, it should look again up to %d times", spinLooks)
	}
	// Looks that end in a wait in C use the credit up.
	for i := 0; i < spinCredit; i++ {
		s.learn(spinLooks, true)
	}
	if s.again(0) {
		t.Fatal("looks that found nothing kept it looking again")
	}
	// Waits with no credit left lead to one try.
	for i := 0; i < spinProbe-1; i++ {
		s.learn(0, true)
		if s.again(0) {
			t.Fatalf("it tried again after %d waits", i+1)
		}
	}
	s.learn(0, true)
	if !s.again(0) {
		t.Fatalf("no try after %d waits", spinProbe)
	}
	// A look that finds events restores the whole credit.
	s.learn(1, false)
	if s.credit != spinCredit {
		t.Fatalf("credit %d after a look paid, want %d", s.credit, spinCredit)
	}
	// With no other poller in the process it never looks again.
	pollers.Add(-1)
	if s.again(0) {
		t.Fatal("a lone poller looked again")
	}
	pollers.Add(1)
}
