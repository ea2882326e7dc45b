package spec

import (
	"encoding/json"
	"reflect"
	"testing"
)

// The field names are a contract with agents already installed in customers' clusters:
// renaming one silently drops that field on every older agent. This pins them.
func TestSessionJSONIsStable(t *testing.T) {
	t.Parallel()
	s := Session{
		SessionID: "sess_x", Owner: "usr_y", Template: "firefox", Image: "registry.example/firefox:128",
		Env:          []EnvVar{{Name: "LANG", Value: "C.UTF-8"}},
		Resources:    Resources{Requests: ResourceList{CPU: "500m", Memory: "1Gi"}, Limits: ResourceList{CPU: "2"}},
		CPUMillis:    500,
		MemoryBytes:  1 << 30,
		Home:         &Home{MountPath: "/home/user", Size: "10Gi"},
		Volumes:      []Volume{{Name: "cache", MountPath: "/cache"}},
		Ports:        []Port{{Name: "vnc", Port: 5901, Protocol: TCP, Stream: StreamRFB}, {Name: "audio", Port: 4713, Protocol: UDP}},
		Capabilities: []Capability{CapAudio, CapClipboard},
	}
	const want = `{"session_id":"sess_x","owner_id":"usr_y","template":"firefox","image":"registry.example/firefox:128",` +
		`"env":[{"name":"LANG","value":"C.UTF-8"}],"resources":{"requests":{"cpu":"500m","memory":"1Gi"},"limits":{"cpu":"2"}},` +
		`"cpu_millis":500,"memory_bytes":1073741824,"home":{"mount_path":"/home/user","size":"10Gi"},` +
		`"volumes":[{"name":"cache","mount_path":"/cache"}],` +
		`"ports":[{"name":"vnc","port":5901,"protocol":"TCP","stream":"rfb"},{"name":"audio","port":4713,"protocol":"UDP"}],` +
		`"capabilities":["Audio","Clipboard"]}`
	got, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("encoded\n%s\nwant\n%s", got, want)
	}
	// A newer control plane may send fields this version does not know; they are ignored.
	var back Session
	if err := json.Unmarshal([]byte(want[:len(want)-1]+`,"gpu":{"count":1}}`), &back); err != nil {
		t.Fatalf("decoding with an unknown field: %v", err)
	}
	if !reflect.DeepEqual(back, s) {
		t.Fatalf("round trip:\n%+v\nwant\n%+v", back, s)
	}
}
