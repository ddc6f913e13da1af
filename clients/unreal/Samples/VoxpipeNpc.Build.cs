// Sample module rules for a game module that holds VoxpipeNpcComponent (copy into your module's Build.cs).
using System.IO;
using UnrealBuildTool;

public class VoxpipeNpc : ModuleRules
{
    public VoxpipeNpc(ReadOnlyTargetRules Target) : base(Target)
    {
        PCHUsage = PCHUsageMode.UseExplicitOrSharedPCHs;
        PublicDependencyModuleNames.AddRange(new[] { "Core", "CoreUObject", "Engine", "WebSockets", "AudioCaptureCore", "AudioMixer" });
        // voxpipe_protocol.hpp and nlohmann/json.hpp (single header, MIT) copied under ThirdParty/Voxpipe.
        PublicIncludePaths.Add(Path.Combine(ModuleDirectory, "..", "ThirdParty", "Voxpipe"));
        PublicDefinitions.Add("JSON_NOEXCEPTION=1");
    }
}
