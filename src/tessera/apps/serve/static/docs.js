// Renders /openapi.json as plain HTML: the API docs without a CDN.
"use strict";

function el(tag, props, ...kids) {
  const e = Object.assign(document.createElement(tag), props || {});
  e.append(...kids.filter((k) => k !== null && k !== undefined));
  return e;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return spec.components.schemas[name] || {};
  }
  return schema || {};
}

function typeOf(spec, s) {
  s = resolve(spec, s);
  if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(" | ");
  if (s.type === "array") return `${typeOf(spec, s.items)}[]`;
  return s.format ? `${s.type} (${s.format})` : s.type || "object";
}

function fieldsTable(spec, schema) {
  const s = resolve(spec, schema);
  const props = s.properties || {};
  const required = new Set(s.required || []);
  const rows = Object.entries(props).map(([name, p]) => {
    const def = p.default === undefined ? "" : JSON.stringify(p.default);
    return el("tr", null, el("td", null, el("code", { textContent: name + (required.has(name) ? " *" : "") })),
      el("td", { textContent: typeOf(spec, p) }), el("td", { textContent: def }),
      el("td", { textContent: p.description || "" }));
  });
  if (!rows.length) return null;
  const head = el("tr", null, ...["field", "type", "default", ""].map((t) => el("th", { textContent: t })));
  return el("table", null, head, ...rows);
}

function render(spec) {
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}: API`;
  const main = document.getElementById("api");
  main.replaceChildren(el("p", { textContent: spec.info.description || "" }));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = el("section", { className: "op" },
        el("h2", null, el("span", { className: "method", textContent: method.toUpperCase() }), path),
        el("p", { textContent: op.summary || "" }),
        op.description ? el("p", { className: "hint", textContent: op.description }) : null);
      const content = (op.requestBody && op.requestBody.content) || {};
      for (const [type, body] of Object.entries(content)) {
        box.append(el("p", null, "Body: ", el("code", { textContent: type })), fieldsTable(spec, body.schema));
      }
      const codes = Object.keys(op.responses || {}).join(", ");
      box.append(el("p", { className: "hint", textContent: `Documented responses: ${codes}` }));
      main.append(box);
    }
  }
}

fetch("/openapi.json")
  .then((r) => r.json())
  .then(render)
  .catch((e) => { document.getElementById("api").textContent = `cannot load /openapi.json: ${e}`; });
