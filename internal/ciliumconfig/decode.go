package ciliumconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// ConfigMapName is the ConfigMap Cilium reads its agent configuration from.
const ConfigMapName = "cilium-config"

// ConfigMap is the part of a ConfigMap Import needs.
type ConfigMap struct {
	Namespace string
	Name      string
	Data      map[string]string
}

// DecodeConfigMap reads a cilium-config ConfigMap from YAML or JSON: the
// output of kubectl get -o yaml|json, a Helm-rendered multi-document file
// (the ConfigMap named cilium-config is picked), or the {"data": ...} merge
// patch that Export prints (null values there delete keys and are skipped).
func DecodeConfigMap(raw []byte) (ConfigMap, error) {
	if len(bytes.TrimSpace(raw)) == 0 {
		return ConfigMap{}, errors.New("the input is empty: give a cilium-config ConfigMap, e.g. from kubectl -n kube-system get configmap cilium-config -o yaml")
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var candidates []map[string]any
	var others []string
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return ConfigMap{}, fmt.Errorf("document %d is not valid YAML or JSON: %w", i+1, err)
		}
		if doc == nil { // an empty document between two "---"
			continue
		}
		kind, _ := doc["kind"].(string)
		switch kind {
		case "ConfigMap", "":
			candidates = append(candidates, doc)
		default:
			others = append(others, kind)
		}
	}
	doc, err := pick(candidates, others)
	if err != nil {
		return ConfigMap{}, err
	}
	return toConfigMap(doc)
}

// pick chooses the document to import: the one named cilium-config, or the
// only ConfigMap-like document there is.
func pick(docs []map[string]any, others []string) (map[string]any, error) {
	var names []string
	for _, d := range docs {
		name := nameOf(d)
		if name == ConfigMapName {
			return d, nil
		}
		names = append(names, name)
	}
	switch {
	case len(docs) == 1:
		return docs[0], nil
	case len(docs) == 0 && len(others) > 0:
		slices.Sort(others)
		return nil, fmt.Errorf("the input has no ConfigMap (kinds found: %s): give the cilium-config ConfigMap", strings.Join(slices.Compact(others), ", "))
	case len(docs) == 0:
		return nil, errors.New("the input holds no document: give a cilium-config ConfigMap")
	default:
		return nil, fmt.Errorf("the input has %d ConfigMaps and none is named %s (found %s): keep only the one Cilium reads", len(docs), ConfigMapName, strings.Join(names, ", "))
	}
}

func nameOf(doc map[string]any) string {
	meta, _ := doc["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	return name
}

func toConfigMap(doc map[string]any) (ConfigMap, error) {
	cm := ConfigMap{Name: nameOf(doc), Data: map[string]string{}}
	if meta, ok := doc["metadata"].(map[string]any); ok {
		cm.Namespace, _ = meta["namespace"].(string)
	}
	raw, ok := doc["data"]
	if !ok || raw == nil {
		return ConfigMap{}, errors.New("the ConfigMap has no data: give the cilium-config ConfigMap with its keys, e.g. from kubectl -n kube-system get configmap cilium-config -o yaml")
	}
	data, ok := raw.(map[string]any)
	if !ok {
		return ConfigMap{}, fmt.Errorf("the ConfigMap's data is a %T, not a map of keys to strings", raw)
	}
	for k, v := range data {
		switch v := v.(type) {
		case string:
			cm.Data[k] = v
		case nil: // a merge patch's "delete this key"
		default:
			return ConfigMap{}, fmt.Errorf("data.%s is %v, not a string: a ConfigMap holds strings only, quote the value (%s: %q)", k, v, k, fmt.Sprint(v))
		}
	}
	return cm, nil
}
