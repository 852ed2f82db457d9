"""The C# library as a NuGet package: `dotnet pack` of src/Thaw.Interop, consumed by a scratch
project outside the repository from a local feed only (offline), running README's "Use Thaw from C#"."""
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from test_torch_io import write_safetensors

REPO = Path(__file__).resolve().parents[2]


def readme_csharp_sample() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use Thaw from C#"):]
    return re.search(r"```csharp\n(.*?)```", section, re.S).group(1)


def dotnet(*args, cwd, env):
    r = subprocess.run(["dotnet", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    if shutil.which("dotnet") is None:
        pytest.skip("no .NET SDK")
    feed = tmp_path_factory.mktemp("feed")
    env = {**os.environ, "DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1"}
    dotnet("pack", REPO / "src" / "Thaw.Interop", "-c", "Release", "-o", feed, cwd=REPO, env=env)
    [nupkg] = feed.glob("Thaw.Interop.*.nupkg")
    return nupkg


def test_the_package_carries_the_core_and_the_docs(package):
    names = set(zipfile.ZipFile(package).namelist())
    assert {"lib/net10.0/Thaw.Interop.dll", "lib/net10.0/Thaw.Interop.xml",
            "runtimes/linux-x64/native/libthawcore.so", "README.md"} <= names
    assert not any(n.endswith((".a", ".pdb")) or "Tests" in n for n in names)


def test_a_scratch_project_consumes_it_offline_and_runs_the_readme_sample(package, tmp_path):
    project = tmp_path / "consumer"
    project.mkdir()
    version = re.match(r"Thaw\.Interop\.(.+)\.nupkg", package.name).group(1)
    (project / "consumer.csproj").write_text(f"""<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup>
    <OutputType>Exe</OutputType>
    <TargetFramework>net10.0</TargetFramework>
    <ImplicitUsings>enable</ImplicitUsings>
    <Nullable>enable</Nullable>
    <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
  </PropertyGroup>
  <ItemGroup><PackageReference Include="Thaw.Interop" Version="{version}" /></ItemGroup>
</Project>
""")
    # Only the local feed: nothing is fetched from the network, and Thaw.Interop cannot come from anywhere else.
    (project / "nuget.config").write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources><clear /><add key="local" value="{package.parent}" /></packageSources>
</configuration>
""")
    (project / "Program.cs").write_text(readme_csharp_sample())
    checkpoint = tmp_path / "model.safetensors"
    tensors = {"embed": torch.randn(300, 16).half(), "norm": torch.randn(16), "step": torch.tensor([7], dtype=torch.int64)}
    write_safetensors(checkpoint, tensors)
    work = tmp_path / "work"
    work.mkdir()
    # A package folder of its own, so a package of the same version packed earlier is never reused.
    env = {**os.environ, "NUGET_PACKAGES": str(tmp_path / "packages"), "DOTNET_CLI_TELEMETRY_OPTOUT": "1", "DOTNET_NOLOGO": "1"}
    out = dotnet("run", "-c", "Release", "--", checkpoint, work, cwd=project, env=env)
    assert "3 tensors" in out and "embed F16 [300, 16]" in out
    restored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert f"restored {restored} bytes" in out
    assert "froze 3 tensors; identical: True" in out
    assert (work / "frozen.thaw").is_file()
    assert (project / "bin" / "Release" / "net10.0" / "runtimes" / "linux-x64" / "native" / "libthawcore.so").is_file()
