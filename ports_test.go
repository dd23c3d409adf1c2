package main

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

// TestParsePorts covers both item forms and every way a -ports value can be
// wrong, so that a bad flag is refused with the value that is at fault.
func TestParsePorts(t *testing.T) {
	valid := []struct {
		spec string
		want []portMap
	}{
		{"80", []portMap{{80, 80}}},
		{"80,443=3000", []portMap{{80, 80}, {443, 3000}}},
		{"1", []portMap{{1, 1}}},
		{"65535", []portMap{{65535, 65535}}},
		{"8080=80,9000", []portMap{{8080, 80}, {9000, 9000}}},
		{"80=80", []portMap{{80, 80}}},
		{"80=8080,8080=80", []portMap{{80, 8080}, {8080, 80}}}, // container ports may repeat host ports
		{"80=3000,81=3000", []portMap{{80, 3000}, {81, 3000}}}, // and each other
	}
	for _, tt := range valid {
		t.Run(tt.spec, func(t *testing.T) {
			got, err := parsePorts(tt.spec)
			if err != nil {
				t.Fatalf("parsePorts(%q): %v", tt.spec, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %v; want %v", got, tt.want)
			}
		})
	}

	// bad is what the error must quote: the bad port, item or spec.
	invalid := []struct {
		name, spec, bad string
	}{
		{"letters", "abc", `port "abc"`},
		{"zero", "0", `port "0"`},
		{"too big", "70000", `port "70000"`},
		{"no container port", "80=", `item "80="`},
		{"no host port", "=80", `item "=80"`},
		{"bad container port", "80=x", `port "x"`},
		{"empty item", "80,,81", `"80,,81"`},
		{"trailing comma", "80,", `"80,"`},
		{"empty", "", `""`},
		{"repeated host port", "80,80=3000", `"80,80=3000"`},
		{"negative", "-1", `port "-1"`},
		{"leading space", " 80", `port " 80"`},
		{"two equals", "80=81=82", `port "81=82"`},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parsePorts(tt.spec)
			if err == nil {
				t.Fatalf("parsePorts(%q) = %v; want an error", tt.spec, got)
			}
			if !strings.Contains(err.Error(), tt.bad) {
				t.Errorf("got error %q; want it to contain %s", err, tt.bad)
			}
		})
	}
}

// TestPortsFlag checks that -ports goes through the flag package: a good
// value is stored and printed back, a bad one fails Parse naming the flag.
func TestPortsFlag(t *testing.T) {
	var maps []portMap
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(portsFlag{&maps}, "ports", "ports")
	if err := fs.Parse([]string{"-ports", "80,443=3000,8080=8080"}); err != nil {
		t.Fatal(err)
	}
	if want := []portMap{{80, 80}, {443, 3000}, {8080, 8080}}; !slices.Equal(maps, want) {
		t.Errorf("got %v; want %v", maps, want)
	}
	if got, want := fs.Lookup("ports").Value.String(), "80,443=3000,8080"; got != want {
		t.Errorf("got String() %q; want %q", got, want)
	}

	// A later -ports replaces the earlier one rather than adding to it.
	if err := fs.Parse([]string{"-ports", "81"}); err != nil {
		t.Fatal(err)
	}
	if want := []portMap{{81, 81}}; !slices.Equal(maps, want) {
		t.Errorf("got %v; want %v", maps, want)
	}

	err := fs.Parse([]string{"-ports", "80,abc"})
	if err == nil {
		t.Fatal("got no error for -ports 80,abc; want one")
	}
	for _, want := range []string{"-ports", `port "abc"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got error %q; want it to contain %s", err, want)
		}
	}
	if want := []portMap{{81, 81}}; !slices.Equal(maps, want) {
		t.Errorf("a failed Set changed the value: got %v; want %v", maps, want)
	}

	// The flag package calls String on a zero Value (for -h).
	if got := (portsFlag{}).String(); got != "" {
		t.Errorf("got zero String() %q; want empty", got)
	}
}

// FuzzParsePorts checks that no input makes parsePorts panic, that whatever
// it accepts is a valid listener set, and that the printed form parses back
// to the same thing (the -h default and log lines use it).
func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{
		"80", "80,443=3000", "1", "65535", "8080=80,9000", "abc", "0", "70000",
		"80=", "=80", "80,,81", "80,", "", "80,80=3000", "-1", " 80", "+80", "080",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		maps, err := parsePorts(spec)
		if err != nil {
			if maps != nil {
				t.Errorf("parsePorts(%q) = %v with error %v; want nil", spec, maps, err)
			}
			return
		}
		if len(maps) == 0 {
			t.Fatalf("parsePorts(%q) accepted no ports", spec)
		}
		seen := make(map[uint16]bool)
		for _, m := range maps {
			if m.host == 0 || m.container == 0 {
				t.Errorf("parsePorts(%q) gave port 0 in %v", spec, m)
			}
			if seen[m.host] {
				t.Errorf("parsePorts(%q) gave host port %d twice", spec, m.host)
			}
			seen[m.host] = true
		}
		printed := portsFlag{&maps}.String()
		again, err := parsePorts(printed)
		if err != nil {
			t.Fatalf("parsePorts(%q) (printed from %q): %v", printed, spec, err)
		}
		if !slices.Equal(again, maps) {
			t.Errorf("round trip of %q via %q: got %v; want %v", spec, printed, again, maps)
		}
	})
}
