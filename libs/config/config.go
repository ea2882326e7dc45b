// Package config reads a binary's settings from flags with environment fallbacks.
//
// Each helper registers one flag on a flag.FlagSet and names the environment variable
// that may set it instead. Parse then gives the command line precedence over the
// environment and the environment over the default, and --help lists every flag with its
// variable and default:
//
//	fs := flag.NewFlagSet("sessions", flag.ContinueOnError)
//	config.String(fs, &cfg.Listen, "listen", "SESSIONS_LISTEN", ":8080", "address to serve HTTP on")
//	if err := config.Parse(fs, os.Args[1:]); errors.Is(err, flag.ErrHelp) { os.Exit(0) }
//
// Typed Config structs keep their own Validate method; this package only reads values.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// envValue is a flag.Value that knows which environment variable backs it. Parse finds
// these among a FlagSet's flags, so no registry outside the FlagSet is needed.
type envValue struct {
	flag.Value
	env      string
	typeName string // shown in usage, e.g. "duration"
}

// boolEnvValue keeps flag's boolean syntax (-x rather than -x=true) working through the
// wrapper.
type boolEnvValue struct{ envValue }

func (*boolEnvValue) IsBoolFlag() bool { return true }

func (v *boolEnvValue) String() string {
	if v == nil {
		return ""
	}
	return v.envValue.String()
}

func (v *envValue) String() string {
	if v == nil || v.Value == nil { // flag may call String on a zero value
		return ""
	}
	return v.Value.String()
}

func (v *envValue) envVar() *envValue { return v }

type envFlag interface{ envVar() *envValue }

func register(fs *flag.FlagSet, v flag.Value, name, env, typeName, usage string, isBool bool) {
	ev := envValue{Value: v, env: env, typeName: typeName}
	if isBool {
		fs.Var(&boolEnvValue{ev}, name, usage)
		return
	}
	fs.Var(&ev, name, usage)
}

// String defines a string flag -name, settable through environment variable env, with
// default def, storing into p.
func String(fs *flag.FlagSet, p *string, name, env, def, usage string) {
	*p = def
	register(fs, (*stringValue)(p), name, env, "string", usage, false)
}

// Duration defines a time.Duration flag (syntax of time.ParseDuration, e.g. "1m30s").
func Duration(fs *flag.FlagSet, p *time.Duration, name, env string, def time.Duration, usage string) {
	*p = def
	register(fs, (*durationValue)(p), name, env, "duration", usage, false)
}

// Int defines an int flag.
func Int(fs *flag.FlagSet, p *int, name, env string, def int, usage string) {
	*p = def
	register(fs, (*intValue)(p), name, env, "int", usage, false)
}

// Bool defines a bool flag; on the command line -name alone means true. The environment
// variable takes strconv.ParseBool syntax (1, t, true, 0, f, false, ...).
func Bool(fs *flag.FlagSet, p *bool, name, env string, def bool, usage string) {
	*p = def
	register(fs, (*boolValue)(p), name, env, "bool", usage, true)
}

// Parse parses args (without the program name) into fs, then, for every flag defined by
// this package and not given on the command line, applies its environment variable when
// that is set and not empty. A bad value in either place is an error naming the flag and,
// for the environment, the variable.
//
// Parse replaces fs.Usage with Usage, because the flag package's listing cannot show the
// environment variables. With -h or --help it prints the usage and returns flag.ErrHelp,
// so the caller can exit 0. Give fs flag.ContinueOnError to get errors back instead of an
// exit.
func Parse(fs *flag.FlagSet, args []string) error {
	return ParseEnv(fs, args, os.LookupEnv)
}

// ParseEnv is Parse reading the environment through lookup, for tests that must not
// touch the process environment.
func ParseEnv(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	fs.Usage = func() { Usage(fs) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	var err error
	fs.VisitAll(func(f *flag.Flag) {
		ef, ok := f.Value.(envFlag)
		if err != nil || !ok || onCommandLine[f.Name] {
			return
		}
		env := ef.envVar().env
		if env == "" {
			return
		}
		// Empty counts as unset: manifests often template variables to "".
		val, ok := lookup(env)
		if !ok || val == "" {
			return
		}
		if setErr := fs.Set(f.Name, val); setErr != nil {
			err = fmt.Errorf("invalid value %q for environment variable %s (flag -%s): %w", val, env, f.Name, setErr)
		}
	})
	return err
}

// Usage writes fs's usage to fs.Output(): each flag with its type, its usage text, and
// "(env NAME, default X)". Flags defined without this package are listed too, with their
// default only.
func Usage(fs *flag.FlagSet) {
	w := fs.Output()
	if fs.Name() == "" {
		_, _ = fmt.Fprintf(w, "Usage:\n")
	} else {
		_, _ = fmt.Fprintf(w, "Usage of %s:\n", fs.Name())
	}
	PrintDefaults(w, fs)
}

// PrintDefaults writes the flag listing of Usage to w.
func PrintDefaults(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		var b strings.Builder
		typeName, env := "", ""
		if ef, ok := f.Value.(envFlag); ok {
			typeName, env = ef.envVar().typeName, ef.envVar().env
		} else {
			typeName, _ = flag.UnquoteUsage(f)
		}
		fmt.Fprintf(&b, "  -%s", f.Name)
		if typeName != "" && typeName != "bool" {
			fmt.Fprintf(&b, " %s", typeName)
		}
		fmt.Fprintf(&b, "\n    \t%s", strings.ReplaceAll(f.Usage, "\n", "\n    \t"))
		def := f.DefValue
		if typeName == "string" {
			def = strconv.Quote(def)
		}
		if env != "" {
			fmt.Fprintf(&b, " (env %s, default %s)", env, def)
		} else {
			fmt.Fprintf(&b, " (default %s)", def)
		}
		_, _ = fmt.Fprintln(w, b.String())
	})
}

// The flag package's own Value types are unexported, hence these.

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("not a duration such as 30s or 1m30s")
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return errors.New("not an integer")
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New("not a boolean such as true or false")
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string { return strconv.FormatBool(bool(*v)) }
