"""The documentation cannot rot: every command and snippet of README.md and docs/*.md is checked
(tools/check_docs.py), and the quickstart blocks are executed as written."""
from __future__ import annotations

import os
import os.path as osp
import sys

import pytest
from conftest import json_lines, single_thread_env, training_loss_fell

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'tools'))

import check_docs  # noqa: E402


def test_docs_static_checks_pass():
    report = check_docs.check(check_docs.doc_files(), run=False, scratch=None)
    assert report.problems == []
    assert report.checked >= 20


def test_every_doc_page_is_reachable_from_the_readme():
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    for page in check_docs.doc_files()[1:]:
        assert page in readme, f'README.md does not link {page}'


def test_design_layout_names_every_package_and_module():
    """docs/design.md's layout block is the map of the package: it must name every folder and module there is
    (``__init__``/``__main__`` aside), and nothing that is gone."""
    import os
    import re
    with open(osp.join(ROOT, 'docs', 'design.md'), encoding='utf-8') as f:
        text = f.read()
    block = text.split('## Layout', 1)[1].split('```', 2)[1]
    listed = set(re.findall(r'^\s*([\w./]+)', block, flags=re.M))
    package = osp.join(ROOT, 'hrnet_mm')
    missing = []
    for dirpath, dirs, files in os.walk(package):
        dirs[:] = [d for d in dirs if not d.startswith(('.', '__'))]
        rel = osp.relpath(dirpath, package)
        folder = rel.replace(os.sep, '/')
        if rel != '.' and not any(n.rstrip('/') in (folder, folder.split('/')[-1]) or n.startswith(folder + '/')
                                  for n in listed):
            missing.append(rel + '/')
        for name in files:
            if name.endswith('.py') and not name.startswith('__') and rel.split(os.sep)[0] not in ('datasets', 'utils'):
                path = name if rel == '.' else f'{rel}/{name}'
                if name not in listed and path not in listed:
                    missing.append(path)
    assert not missing, f'docs/design.md\'s layout does not name {missing}'
    stale = [n for n in listed if n.endswith('.py') and not any(
        f == n or f.endswith('/' + n) for f in (osp.relpath(osp.join(d, x), package).replace(os.sep, '/')
                                                for d, _, fs in os.walk(package) for x in fs))]
    assert not stale, f'docs/design.md\'s layout names files that are gone: {stale}'


def test_checker_reports_each_kind_of_problem(tmp_path):
    doc = tmp_path / 'bad.md'
    doc.write_text('\n'.join([
        'See [missing](nowhere.md).',
        '```bash',
        'python tools/train.py configs/demo/no_such_config.py --no-such-flag',
        'python tools/infer.py CONFIG CHECKPOINT IMAGE --out-dir out/',
        'make no-such-target',
        'frobnicate --all',
        '```',
        '```python',
        'def broken(:',
        '```',
    ]) + '\n')
    report = check_docs.check([str(doc)], run=False, scratch=None)
    text = '\n'.join(report.problems)
    assert 'broken link nowhere.md' in text
    assert 'path not found: configs/demo/no_such_config.py' in text
    assert 'has no option --no-such-flag' in text
    assert "Makefile has no target 'no-such-target'" in text
    assert "unknown program 'frobnicate'" in text
    assert 'python block does not compile' in text
    assert '--out-dir' not in text  # a real flag of a command with placeholders passes
    assert len(report.problems) == 6


def test_annotations(tmp_path):
    doc = tmp_path / 'ann.md'
    doc.write_text('<!-- docs-check: skip -->\n```bash\nfrobnicate\n```\n')
    report = check_docs.check([str(doc)], run=False, scratch=None)
    assert any('skip needs a reason' in p for p in report.problems)
    doc.write_text('<!-- docs-check: skip needs a GPU -->\n```bash\nfrobnicate\n```\n'
                   '<!-- docs-check: run -->\n```bash\npython -c "import sys; sys.exit(3)"\n```\n')
    report = check_docs.check([str(doc)], run=True, scratch=str(tmp_path / 'scratch'))
    assert len(report.problems) == 1 and 'exit status 3' in report.problems[0]
    assert report.ran == 1


def test_config_blocks_are_loaded(tmp_path):
    doc = tmp_path / 'cfg.md'
    doc.write_text("<!-- docs-check: config -->\n```python\n_base_ = 'hrnet_mm::no/such/file.py'\n```\n")
    report = check_docs.check([str(doc)], run=True, scratch=str(tmp_path / 'scratch'))
    assert len(report.problems) == 1 and 'Config.fromfile' in report.problems[0]


# The README's quickstarts: config, checkpoint, and the metrics it must reach (each a test of its own, so that
# the suite's workers share them).
# - seg: mmseg reports percent, averaged over the 8 classes present. A constant prediction of the largest class
#   (road or sky, < 35% of the pixels) gets mIoU < 35/8 ~ 4.4; a uniform random one < 100/8 = 12.5 per class and far
#   less for small classes. The demo measures ~75.
# - pose: OKS AP over thresholds 0.5:0.95 with the ground-truth boxes. The figures' limbs are placed at random
#   angles, so a fixed mean pose misses wrists, elbows and knees by much more than their OKS tolerance: AP near 0.
#   The demo measures ~0.9.
# - det: random boxes on 128x160 images with 1-3 objects essentially never reach IoU 0.5 with the right class, so a
#   chance detector has bbox mAP@0.5 ~ 0. Measured (unseeded runs, 48 training images): mAP 0.2-0.5, mAP@0.5
#   0.5-0.75.
# - cls: 4 balanced classes: chance top-1 is 25%; 40 validation images, so >= 60% (24 right) has a probability
#   below 1e-6 under chance. The demo measures ~90%.
QUICKSTARTS = {
    'seg': ('fcn_hrnetv2-tiny_1xb4-300it_demo-cityscapes', 'iter_300.pth', lambda m: m['mIoU'] > 40),
    'pose': ('td-hm_hrnet-tiny_1xb8-12e_demo-coco-128x96', 'epoch_12.pth', lambda m: m['coco/AP'] > 0.5),
    'det': ('faster-rcnn_hrnetv2p-tiny_1xb2-8e_demo-coco', 'epoch_8.pth',
            lambda m: m['coco/bbox_mAP_50'] > 0.1 and m['coco/bbox_mAP'] > 0.05),
    'cls': ('hrnet-tiny_1xb8-6e_demo-imagenet', 'epoch_6.pth', lambda m: m['accuracy/top1'] >= 60),
}


@pytest.fixture
def one_thread(monkeypatch):
    """The docs' commands run with one OpenMP thread, as the tools' tests run theirs (``single_thread_env``):
    beside the other pytest worker, two threads spin against it and train several times slower."""
    for key, value in single_thread_env().items():
        if os.environ.get(key) != value:
            monkeypatch.setenv(key, value)


def _quickstart_block(config: str):
    """The README's run block that trains ``config``."""
    (block,) = [b for b in check_docs.parse_blocks('README.md') if b.mode == 'run' and f'{config}.py' in b.text]
    return block


@pytest.mark.slow
@pytest.mark.parametrize('task', list(QUICKSTARTS))
def test_readme_quickstart_runs_as_written(tmp_path, task, one_thread):
    """A README quickstart, executed as written in a scratch folder: it writes the data, trains, tests, draws
    predictions and plots curves, and its model scores clearly above chance (tests/tools/test_demo.py runs `make
    demo` for pose, with the detector-to-pose pipeline and the int8 deploy model after it)."""
    config, ckpt, good = QUICKSTARTS[task]
    line = _quickstart_block(config).line
    report = check_docs.check(['README.md'], run=True, scratch=str(tmp_path), select=lambda b: b.line == line)
    assert report.problems == []
    assert report.ran == 5
    work = tmp_path / 'README_md' / 'work_dirs' / task
    assert (work / ckpt).is_file()
    assert (work / 'curves.png').stat().st_size > 10_000
    assert len(list((work / 'pictures').glob('*.png'))) >= 2
    (scalars,) = work.glob('*/vis_data/scalars.json')
    training_loss_fell(scalars)
    (path,) = [p for p in (tmp_path / 'README_md' / 'work_dirs' / config).glob('*/*.json')
               if p.name != 'scalars.json']
    metrics = json_lines(path)[-1]
    assert good(metrics), metrics


@pytest.mark.slow
def test_docs_run_blocks_execute_as_written(tmp_path, one_thread):
    """Every other run and config block of the docs (the Python examples and the config snippets), each executed
    in a scratch folder as a user would run them."""
    quickstarts = {('README.md', _quickstart_block(config).line) for config, _, _ in QUICKSTARTS.values()}
    blocks = [b for path in check_docs.doc_files() for b in check_docs.parse_blocks(path)
              if b.mode in ('run', 'config') and (b.path, b.line) not in quickstarts]
    report = check_docs.check(check_docs.doc_files(), run=True, scratch=str(tmp_path),
                              select=lambda b: (b.path, b.line) not in quickstarts)
    assert report.problems == []
    assert len(blocks) >= 5 and report.ran >= len(blocks)


def test_readme_speed_table_is_generated_from_the_committed_result():
    """The README's speed table is what ``tools/benchmark.py --markdown`` makes of the committed result file."""
    import json

    import benchmark
    with open(osp.join(ROOT, 'docs', 'results', 'benchmark-cpu.json'), encoding='utf-8') as f:
        result = json.load(f)
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    assert benchmark.readme_table(readme) == benchmark.format_markdown(result).strip(), (
        'README.md: run python tools/benchmark.py --markdown docs/results/benchmark-cpu.json --write-readme README.md')
