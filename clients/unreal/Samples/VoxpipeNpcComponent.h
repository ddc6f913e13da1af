// Sample (not built by the repository's tests): a voice NPC component for Unreal Engine 5.3+.
// Transport: Unreal's IWebSocket (WebSockets module), binary frames carrying msgpack via the
// engine-free voxpipe_protocol.hpp. Playback: USoundWaveProcedural fed as audio arrives, held (the
// UAudioComponent paused, its queued audio kept) on `agent_paused` and played on from there on
// `agent_resumed`, reset on `interrupted` (which also ends a pause). Mic: Audio::FAudioCapture (AudioCaptureCore), resampled to 16 kHz, sent from Tick.
// Resume: a dropped socket (or going_away) reconnects with hello.resume after a backoff, using the same
// voxpipe::ResumeState as the C++ core (replayed duplicates ignored; resume_failed -> a new session).
#pragma once

#include "AudioCaptureCore.h"
#include "Components/ActorComponent.h"
#include "Containers/Queue.h"
#include "CoreMinimal.h"
#include "IWebSocket.h"
#include "TimerManager.h"
THIRD_PARTY_INCLUDES_START
#include "voxpipe_protocol.hpp"
THIRD_PARTY_INCLUDES_END
#include "VoxpipeNpcComponent.generated.h"

class UAudioComponent;
class USoundWaveProcedural;

DECLARE_DYNAMIC_MULTICAST_DELEGATE_TwoParams(FVoxpipeTextEvent, int32, Turn, const FString&, Text);
DECLARE_DYNAMIC_MULTICAST_DELEGATE_OneParam(FVoxpipeTurnEvent, int32, Turn);

UCLASS(ClassGroup = (Audio), meta = (BlueprintSpawnableComponent))
class UVoxpipeNpcComponent : public UActorComponent
{
    GENERATED_BODY()

public:
    UVoxpipeNpcComponent();

    UPROPERTY(EditAnywhere, Category = "Voxpipe")
    FString ServerUrl = TEXT("ws://127.0.0.1:8765/ws");

    // Leave false for speakers + an open mic: the server's echo guard keeps the NPC from interrupting itself.
    UPROPERTY(EditAnywhere, Category = "Voxpipe")
    bool bClientHasEchoCancellation = false;

    UPROPERTY(EditAnywhere, Category = "Voxpipe")
    FString SystemPrompt = TEXT("You are a blacksmith in a medieval village. Answer in one short sentence.");

    UPROPERTY(BlueprintAssignable, Category = "Voxpipe")
    FVoxpipeTextEvent OnReply;        // reply deltas as they stream

    UPROPERTY(BlueprintAssignable, Category = "Voxpipe")
    FVoxpipeTextEvent OnTranscript;   // what the player said (final transcripts)

    // The player spoke over the NPC: its voice is held (not cut) while the server decides, e.g. to show a
    // "listening" pose. Then OnAgentResumed (a backchannel or a cough: it goes on) or the turn is interrupted.
    UPROPERTY(BlueprintAssignable, Category = "Voxpipe")
    FVoxpipeTurnEvent OnAgentPaused;

    UPROPERTY(BlueprintAssignable, Category = "Voxpipe")
    FVoxpipeTurnEvent OnAgentResumed;

    // After a drop: Turn is 1 when the conversation was resumed, 0 when a new session started; Text the session id.
    UPROPERTY(BlueprintAssignable, Category = "Voxpipe")
    FVoxpipeTextEvent OnReconnected;

    UFUNCTION(BlueprintCallable, Category = "Voxpipe")
    void Say(const FString& Line);

    UFUNCTION(BlueprintCallable, Category = "Voxpipe")
    void Ask(const FString& Text);

    UFUNCTION(BlueprintCallable, Category = "Voxpipe")
    void StopTalking();

protected:
    virtual void BeginPlay() override;
    virtual void EndPlay(const EEndPlayReason::Type Reason) override;
    virtual void TickComponent(float DeltaTime, ELevelTick TickType, FActorComponentTickFunction* Tick) override;

private:
    void SendFrame(const struct FVoxpipeFrame& Frame);
    void OnRawMessage(const void* Data, SIZE_T Size, SIZE_T BytesRemaining);
    void HandleMessage(const TArray<uint8>& Bytes);
    void StartMicrophone();
    void OpenSocket(bool bResume);
    void OnSocketEnded(int32 Code, const FString& Why);
    void CloseSocket();
    void SetHeld(bool bHold);

    TSharedPtr<IWebSocket> Socket;
    TArray<uint8> Partial;                     // fragments of the binary frame being received
    bool bReady = false;
    bool bEverReady = false;                   // a session exists: a drop resumes it
    bool bResuming = false;                    // the current socket sent hello.resume
    bool bEnding = false;                      // EndPlay: no more reconnects
    int32 Attempt = 0;
    std::string FatalCode;                     // a fatal error's code on the current socket
    voxpipe::ResumeState Resume;
    FTimerHandle ReconnectTimer;

    UPROPERTY()
    TObjectPtr<USoundWaveProcedural> Wave;
    UPROPERTY()
    TObjectPtr<UAudioComponent> Speaker;
    int32 OutRate = 24000;
    int32 PlayingTurn = -1;
    int64 QueuedBytesOfTurn = 0;               // bytes of PlayingTurn handed to Wave
    TSet<int32> CutTurns;
    bool bHeld = false;                        // agent_paused: Speaker paused, Wave keeps what is queued
    float AckTimer = 0.f;

    Audio::FAudioCapture Capture;
    TQueue<TArray<int16>, EQueueMode::Spsc> MicFrames;  // capture thread -> game thread
    TArray<int16> MicPending;                  // capture thread only
    double MicResamplePos = 0.0;               // capture thread only
};
