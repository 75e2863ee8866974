// A seeded generator of random JSON Schemas for the structured-output
// property tests: nesting, arrays (items, prefixItems), enums, const,
// anyOf/oneOf with disjoint branches, $ref/$defs (also recursive), formats,
// patterns, integer ranges, nullable types, additionalProperties schemas,
// allOf of objects. Every string and array is bounded so that a random model
// finishes its output well within the token budget.

export function rng(seed) {
  let s = BigInt(seed) * 0x9E3779B97F4A7C15n + 1n;
  const mask = (1n << 64n) - 1n;
  s &= mask;
  // consecutive seeds start close together: stir before the first draw
  for (let i = 0; i < 16; i++) {
    s ^= (s << 13n) & mask;
    s ^= s >> 7n;
    s ^= (s << 17n) & mask;
  }
  return () => {
    s ^= (s << 13n) & mask;
    s ^= s >> 7n;
    s ^= (s << 17n) & mask;
    return Number(s >> 11n) / 9007199254740992;
  };
}

export function makeSchema(seed) {
  const r = rng(seed);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const int = (lo, hi) => lo + Math.floor(r() * (hi - lo + 1));
  const defs = {};
  let nDefs = 0;

  const leaf = () => {
    switch (int(0, 11)) {
      case 0: { const max = int(0, 10); return { type: 'string', maxLength: max, ...(r() < 0.3 ? { minLength: int(0, Math.min(2, max)) } : {}) }; }
      case 1: return { type: 'integer', ...(r() < 0.6 ? { minimum: int(-500, 50), maximum: int(60, 100000) } : {}) };
      case 2: return { type: 'number' };
      case 3: return { type: 'boolean' };
      case 4: return { enum: pick([['red', 'green', 'blue'], [1, 2, 3], ['a', null, 7, true], [{ k: 'v' }, [1, 2]]]) };
      case 5: return { const: pick(['fixed', 42, null, { x: [1] }]) };
      case 6: return { type: 'string', format: pick(['date', 'time', 'date-time', 'uuid', 'email']) };
      case 7: return { type: 'string', pattern: pick(['^[A-Z]{2}-\\d{3}$', '^(ab|cd)+x?$', '^[a-f0-9]{4,8}$', '^\\w{1,5}@\\d$']) };
      case 8: return { type: [pick(['string', 'integer', 'boolean']), 'null'], maxLength: 6 };
      case 9: return { type: 'integer', exclusiveMinimum: int(-10, 10), exclusiveMaximum: int(20, 40) };
      case 10: return { type: 'string', maxLength: 4, nullable: true };
      default: return { type: 'null' };
    }
  };

  const node = (depth) => {
    if (depth >= 3 || (depth > 0 && r() < 0.35)) return leaf();
    switch (int(0, 6)) {
      case 0:
      case 1: {
        const props = {};
        const n = int(0, 5);
        const req = [];
        for (let i = 0; i < n; i++) {
          const name = pick(['id', 'name', 'value', 'items', 'meta', 'x', 'y', 'tag', 'a b', 'ünï', 'q"uote']) + i;
          props[name] = node(depth + 1);
          if (r() < 0.6) req.push(name);
        }
        const o = { type: 'object', properties: props, required: req };
        const ap = r();
        // extra keys are unbounded strings: a random model may ramble in
        // them until the token budget ends, so they are rare here
        if (ap < 0.7) o.additionalProperties = false;
        else if (ap < 0.75) o.additionalProperties = { type: 'integer', minimum: 0, maximum: 9 };
        return o;
      }
      case 2: return { type: 'array', items: node(depth + 1), minItems: int(0, 1), maxItems: int(1, 3) };
      case 3: return { type: 'array', prefixItems: [node(depth + 1), leaf()], items: false, minItems: int(0, 2) };
      case 4: {
        // anyOf / oneOf over branches of different types (disjoint)
        const branches = [
          { type: 'string', maxLength: 5 },
          { type: 'integer', minimum: 0, maximum: 99 },
          { type: 'object', properties: { k: node(depth + 1) }, required: ['k'], additionalProperties: false },
          { type: 'array', items: { type: 'boolean' }, maxItems: 2 },
          { type: 'null' },
        ];
        const n = int(2, 3);
        const chosen = [];
        while (chosen.length < n) {
          const b = pick(branches);
          if (!chosen.includes(b)) chosen.push(b);
        }
        return { [r() < 0.5 ? 'anyOf' : 'oneOf']: chosen };
      }
      case 5: {
        const name = `d${nDefs++}`;
        defs[name] = node(depth + 1);
        return { $ref: `#/$defs/${name}` };
      }
      default:
        return {
          allOf: [
            { type: 'object', properties: { p: leaf() }, required: ['p'] },
            { type: 'object', properties: { q: leaf() } },
          ],
        };
    }
  };

  let root = node(0);
  // a recursive definition now and then: a bounded tree
  if (r() < 0.2) {
    defs.tree = {
      type: 'object',
      properties: { v: { type: 'integer', minimum: 0, maximum: 9 },
        kids: { type: 'array', items: { $ref: '#/$defs/tree' }, maxItems: 2 } },
      required: ['v'],
      additionalProperties: false,
    };
    root = { type: 'object', properties: { tree: { $ref: '#/$defs/tree' }, other: root },
      required: ['tree', 'other'], additionalProperties: false };
  }
  if (Object.keys(defs).length) root = { ...root, $defs: defs };
  return root;
}
