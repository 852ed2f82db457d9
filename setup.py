"""Only here to tag the wheel by platform: it carries native code (libthaw.so and the
thaw executable, both NativeAOT, linked with the C core) but no Python extension, so
one wheel serves every Python 3 on linux x86-64. Build it with scripts/build_wheel.sh."""
from setuptools import setup

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(cmdclass={"bdist_wheel": PlatformWheel})
