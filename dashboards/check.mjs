// Type-checks every dashboard JSON against @grafana/schema's Dashboard type: each
// JSON object is written into a TypeScript module as an object literal typed
// `Dashboard`, then `tsc --noEmit` checks them all.
import { readdirSync, readFileSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, '.check');
rmSync(out, { recursive: true, force: true });
mkdirSync(out);
const files = readdirSync(here).filter((f) => f.endsWith('.json') && !f.startsWith('package'));
for (const f of files) {
  const json = readFileSync(join(here, f), 'utf8');
  JSON.parse(json); // fails loudly on invalid JSON
  writeFileSync(
    join(out, f.replace(/\.json$/, '.ts')),
    `import type { Dashboard } from '@grafana/schema';\nexport const dashboard: Dashboard = ${json};\n`,
  );
}
writeFileSync(
  join(out, 'tsconfig.json'),
  JSON.stringify({
    compilerOptions: { strict: true, noEmit: true, module: 'esnext', moduleResolution: 'bundler', target: 'es2022', skipLibCheck: true, typeRoots: [] },
    include: ['*.ts'],
  }),
);
try {
  execFileSync(join(here, 'node_modules', '.bin', 'tsc'), ['-p', join(out, 'tsconfig.json')], { stdio: 'inherit' });
} catch {
  console.error('dashboards: type check against @grafana/schema failed');
  process.exit(1);
}
console.log(`dashboards: ${files.length} type-checked against @grafana/schema`);
